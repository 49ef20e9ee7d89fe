"""/v1/embeddings and /v1/models through the official `openai` client against a real `pinclip serve`."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import time

import httpx
import numpy as np
import openai
import pytest
from durability import free_port
from PIL import Image

from pinclip.models.embedder import Embedder
from pinclip.serve.embed import embed_pins_table
from pinclip.serve.faiss_backend import FaissBackend
from pinclip.serve.index import PinIndex

TEXTS = ["red circle", "a blue square on white", "green", "stripes and more stripes of yellow"]


def data_uri(color: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def server(tiny_checkpoint, catalog, tmp_path_factory):
    """`pinclip serve` on the tiny model's index of the synthetic catalog, on a loopback port."""
    root = tmp_path_factory.mktemp("openai")
    embedder = Embedder.from_checkpoint(tiny_checkpoint)
    embed_pins_table(embedder, catalog["pins"], root / "emb", progress=False)
    FaissBackend.create(root / "index", PinIndex.from_embeddings(root / "emb"))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pinclip", "serve", "--index", str(root / "index"), "--checkpoint",
                             str(tiny_checkpoint), "--port", str(port), "--log-level", "warning"],
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            time.sleep(0.1)
    yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0), embedder
    proc.kill()
    proc.wait()


def test_models_lists_the_served_model(server):
    client, embedder = server
    models = client.models.list().data
    assert [m.id for m in models] == [embedder.version] and models[0].model_extra["pinclip"]["dims"] == [32, 16]


@pytest.mark.parametrize("encoding_format", ["float", "base64", None])  # None: the client asks for base64
def test_text_embeddings_equal_the_embedders(server, encoding_format):
    client, embedder = server
    kwargs = {"encoding_format": encoding_format} if encoding_format else {}
    response = client.embeddings.create(model=embedder.version, input=TEXTS, **kwargs)
    rows = [np.frombuffer(base64.b64decode(d.embedding), "<f4") if isinstance(d.embedding, str) else d.embedding
            for d in response.data]  # an explicit base64 request gets the strings as they are
    got = np.array(rows, dtype=np.float32)  # (4, 32)
    expected = embedder.embed_texts(TEXTS)
    assert [d.index for d in response.data] == [0, 1, 2, 3] and response.model == embedder.version
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert response.usage.prompt_tokens > len(TEXTS)


def test_one_string_and_a_matryoshka_prefix(server):
    client, embedder = server
    response = client.embeddings.create(model=embedder.version, input="red circle", dimensions=16,
                                        encoding_format="float")
    full = embedder.embed_texts(["red circle"])[0]
    np.testing.assert_allclose(response.data[0].embedding, full[:16] / np.linalg.norm(full[:16]), atol=1e-6)


def test_a_dimension_the_model_does_not_have_is_400(server):
    client, embedder = server
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=embedder.version, input="x", dimensions=20)
    assert "dimensions" in err.value.body["message"]


def test_an_unknown_model_is_404(server):
    client, _ = server
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")


def test_int8_codes_come_with_the_global_scale_and_zero_point(server):
    client, embedder = server
    response = client.embeddings.create(model=embedder.version, input=TEXTS[:2], encoding_format="int8")
    codes = np.array([d.embedding for d in response.data])  # the client's model types them as floats
    ext = response.model_extra["pinclip"]
    assert np.array_equal(codes, np.round(codes)) and codes.min() >= -128 and codes.max() <= 127
    assert (ext["scale"], ext["zero_point"]) == (embedder.quant.scale, embedder.quant.zero_point)
    decoded = ext["scale"] * (codes - ext["zero_point"])
    np.testing.assert_allclose(decoded, embedder.embed_texts(TEXTS[:2]), atol=ext["scale"])


def test_images_as_data_uris_and_a_pin(server):
    client, embedder = server
    uris = [data_uri((220, 30, 30)), data_uri((30, 60, 220))]
    images = client.embeddings.create(model=embedder.version, input=uris, encoding_format="float",
                                      extra_body={"modality": "image"})
    expected = embedder.embed_images([Image.new("RGB", (40, 30), c) for c in ((220, 30, 30), (30, 60, 220))])
    np.testing.assert_allclose([d.embedding for d in images.data], expected, atol=1e-5)
    pin = {"image": uris[0], "title": "red circle", "queries": ["red"]}
    fused = client.embeddings.create(model=embedder.version, input=[pin], encoding_format="float",
                                     extra_body={"modality": "pin"})
    expected = embedder.embed_pins([{"image": Image.new("RGB", (40, 30), (220, 30, 30)), "title": "red circle",
                                     "queries": ["red"]}])
    np.testing.assert_allclose(fused.data[0].embedding, expected[0], atol=1e-5)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=embedder.version, input=["https://example.com/a.png"],
                                 extra_body={"modality": "image"})
