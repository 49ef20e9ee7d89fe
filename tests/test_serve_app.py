"""The HTTP API: answers on good input, and a clear 4xx (never a 5xx) on bad input."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_fakes import COLORS, FakeEmbedder, color_png, embedded_index

from pinclip.quant import quantize
from pinclip.serve.app import ServeLimits, create_app
from pinclip.serve.serve_cli import load_pins_meta
from pinclip.serve.service import image_roots_of

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def service(tmp_path):
    pins_path, index = embedded_index(tmp_path, 30)
    embedder = FakeEmbedder()
    limits = ServeLimits(max_body_bytes=200_000, max_k=50, max_texts=4, max_text_chars=100, max_image_pixels=1_000_000)
    app = create_app(embedder, index, load_pins_meta(pins_path), TOKEN, limits, image_roots_of(pins_path))
    with TestClient(app) as client:
        yield client, embedder, index


def png_bytes(size: tuple[int, int], color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_health_and_docs(service):
    client, _, index = service
    assert client.get("/health").json() == {"status": "ok", "model_version": "fake-1", "index_size": 30,
                                             "index_kind": "flat", "field": "pin", "dim": 32,
                                             "backend": "faiss"}
    assert "/search/text" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "PinCLIP" in page.text and "CC-BY 4.0" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_text_search_ranks_matching_titles_first(service):
    client, embedder, index = service
    body = client.get("/search/text", params={"q": "blue circle", "k": 3}).json()
    assert body["query"] == "blue circle"
    titles = [hit["title"] for hit in body["results"]]
    assert all(t.startswith("blue circle") for t in titles[:2])  # p002 and p020 are the two blue circles
    expected_scores, _ = index.search(embedder.embed_texts(["blue circle"]), 3)
    assert [h["score"] for h in body["results"]] == pytest.approx(expected_scores[0].tolist(), abs=1e-5)
    assert body["results"][0]["image_url"] == f"/images/{body['results'][0]['pin_id']}"
    posted = client.post("/search/text", json={"q": "blue circle", "k": 3}).json()
    assert posted["results"] == body["results"]


def test_embed_text_full_prefix_and_int8(service):
    client, embedder, _ = service
    full = client.post("/embed/text", json={"texts": ["red square", "green"]}).json()
    vectors = np.array(full["embeddings"])
    assert vectors.shape == (2, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert np.allclose(vectors, embedder.embed_texts(["red square", "green"]), atol=1e-6)
    prefix = np.array(client.post("/embed/text", json={"texts": ["red square"], "dim": 8}).json()["embeddings"])
    expected = vectors[0, :8] / np.linalg.norm(vectors[0, :8])
    assert np.allclose(prefix[0], expected, atol=1e-6)
    codes = client.post("/embed/text", json={"texts": ["red square"], "int8": True}).json()
    assert codes["embeddings"][0] == quantize(vectors[:1], embedder.quant)[0].tolist()
    assert codes["scale"] == pytest.approx(1 / 127) and codes["zero_point"] == 0


def test_image_search_and_embed(service):
    client, embedder, _ = service
    upload = {"file": ("q.png", color_png(COLORS["green"], "square"), "image/png")}
    embedded = client.post("/embed/image", files=upload).json()
    assert len(embedded["embeddings"][0]) == 32
    hits = client.post("/search/image", files=upload, data={"k": "5"}).json()["results"]
    assert len(hits) == 5 and "green" in hits[0]["title"]


def test_pin_neighbors_and_related_exclude_self(service):
    client, _, _ = service
    with_self = client.get("/search/pin/p004", params={"k": 4}).json()
    assert with_self["results"][0]["pin_id"] == "p004"
    related = client.get("/related/p004", params={"k": 4}).json()
    assert related["query"]["title"] == "purple circle 4" and len(related["results"]) == 4
    assert "p004" not in [h["pin_id"] for h in related["results"]]
    assert [h["pin_id"] for h in related["results"]][:3] == [h["pin_id"] for h in with_self["results"]][1:]
    image = client.get("/images/p004")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert client.get("/pins/p004").json() == {"pin_id": "p004", "title": "purple circle 4",
                                               "image_url": "/images/p004"}


def test_add_pin_needs_the_token_and_is_searchable_at_once(service):
    client, _, index = service
    form = {"texts": json.dumps({"title": "magenta zigzag", "queries": ["zigzag"]})}
    files = {"image": ("z.png", png_bytes((40, 40), (255, 0, 255)), "image/png")}
    assert client.post("/pins", data=form, files=files).status_code == 401
    wrong = client.post("/pins", data=form, files=files, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid bearer token"
    added = client.post("/pins", data={**form, "pin_id": "zig-1"}, files=files, headers=AUTH)
    assert added.status_code == 201 and added.json()["pin_id"] == "zig-1" and added.json()["index_size"] == 31
    assert client.get("/search/text", params={"q": "magenta zigzag", "k": 1}).json()["results"][0]["pin_id"] == "zig-1"
    assert client.get("/related/zig-1", params={"k": 3}).status_code == 200
    stored = Image.open(io.BytesIO(client.get("/images/zig-1").content))
    assert stored.size == (40, 40) and stored.convert("RGB").getpixel((5, 5)) == (255, 0, 255)
    fresh = client.post("/pins", data={"title": "plain words", "queries": "one|two"}, headers=AUTH).json()
    assert fresh["pin_id"].startswith("fresh-") and len(index) == 32


def test_re_adding_a_pin_replaces_it_and_delete_removes_it(service):
    client, _, index = service
    first = client.post("/pins", data={"pin_id": "w-1", "title": "orange wagon"}, headers=AUTH).json()
    assert first["replaced"] is False and len(index) == 31
    again = client.post("/pins", data={"pin_id": "w-1", "title": "teal kayak"}, headers=AUTH)
    assert again.status_code == 201 and again.json()["replaced"] is True and len(index) == 31
    assert client.get("/search/text", params={"q": "teal kayak", "k": 1}).json()["results"][0]["pin_id"] == "w-1"
    top = client.get("/search/text", params={"q": "orange wagon", "k": 3}).json()["results"]
    assert "w-1" not in [hit["pin_id"] for hit in top] and client.get("/pins/w-1").json()["title"] == "teal kayak"
    assert client.delete("/pins/w-1").status_code == 401
    gone = client.delete("/pins/w-1", headers=AUTH)
    assert gone.status_code == 200 and gone.json() == {"pin_id": "w-1", "deleted": True, "index_size": 30}
    assert client.get("/pins/w-1").status_code == 404 and client.get("/related/w-1").status_code == 404
    assert client.delete("/pins/w-1", headers=AUTH).status_code == 404
    assert client.delete("/pins/p003", headers=AUTH).status_code == 200  # a pin of the table
    assert client.get("/images/p003").status_code == 404 and len(index) == 29
    hits = client.get("/search/text", params={"q": "green circle", "k": 29}).json()["results"]
    assert "p003" not in [hit["pin_id"] for hit in hits] and len(hits) == 29


def test_a_write_for_another_model_version_is_refused_with_409(service):
    client, _, index = service
    refused = client.post("/pins", data={"title": "x", "model_version": "fake-0"}, headers=AUTH)
    assert refused.status_code == 409 and "fake-1" in refused.json()["detail"] and len(index) == 30
    assert client.post("/pins", data={"title": "x", "model_version": "fake-1"}, headers=AUTH).status_code == 201


def test_add_pin_is_disabled_without_a_configured_token(tmp_path):
    pins_path, index = embedded_index(tmp_path, 6)
    client = TestClient(create_app(FakeEmbedder(), index, load_pins_meta(pins_path), None))
    response = client.post("/pins", data={"title": "x"}, headers=AUTH)
    assert response.status_code == 503 and "disabled" in response.json()["detail"]


BAD_REQUESTS = [
    ("get", "/search/text", {"params": {"q": "", "k": 5}}, 422, "query.q: String should have at least 1 character"),
    ("get", "/search/text", {"params": {"q": "   "}}, 422, "query.q: String should match pattern"),
    ("get", "/search/text", {"params": {"q": "red", "k": 0}}, 422, "query.k: Input should be greater than or equal to 1"),
    ("get", "/search/text", {"params": {"q": "red", "k": 10**6}}, 422, "query.k: Input should be less than or equal to 50"),
    ("get", "/search/text", {"params": {"q": "red", "k": "ten"}}, 422, "query.k"),
    ("get", "/search/text", {"params": {"k": 3}}, 422, "query.q: Field required"),
    ("get", "/search/text", {"params": {"q": "x" * 101}}, 422, "at most 100 characters"),
    ("get", "/related/nope", {}, 404, "pin 'nope' is not in the index"),
    ("get", "/search/pin/nope", {"params": {"k": 3}}, 404, "not in the index"),
    ("get", "/related/p001", {"params": {"k": 51}}, 422, "less than or equal to 50"),
    ("get", "/images/nope", {}, 404, "has no image"),
    ("get", "/pins/nope", {}, 404, "unknown pin"),
    ("post", "/embed/text", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422,
     "request body is not valid JSON"),
    ("post", "/embed/text", {"json": {"texts": []}}, 422, "body.texts: List should have at least 1 item"),
    ("post", "/embed/text", {"json": {"texts": ["a"] * 5}}, 422, "at most 4 items after validation, not 5"),
    ("post", "/embed/text", {"json": {"texts": "a"}}, 422, "body.texts"),
    ("post", "/embed/text", {"json": {"texts": ["a"], "dim": 7}}, 422, "body.dim: Input should be 32, 16 or 8"),
    ("post", "/embed/text", {"json": {"texts": [""]}}, 422, "body.texts.0: "),
    ("post", "/search/text", {"json": {"k": 3}}, 422, "body.q: Field required"),
    ("post", "/search/image", {"files": {"file": ("bad.png", b"\x89PNG garbage", "image/png")}}, 422,
     "uploaded file 'bad.png': "),
    ("post", "/search/image", {"files": {"file": ("empty.png", b"", "image/png")}}, 422, "is empty"),
    ("post", "/search/image", {"files": {"file": ("huge.png", png_bytes((1200, 1000)), "image/png")}}, 413,
     "image too large: 1200x1000"),
    ("post", "/search/image", {"data": {"k": "3"}}, 422, "body.file: Field required"),
    ("post", "/embed/image", {"content": b"x" * 300_000, "headers": {"content-type": "image/png"}}, 413,
     "request body over 200,000 bytes"),
    ("post", "/pins", {"data": {"title": "x"}, "headers": {"Authorization": "Basic abc"}}, 401, "missing bearer token"),
    ("post", "/pins", {"data": {"texts": "{oops"}, "headers": AUTH}, 422, "texts is not valid JSON"),
    ("post", "/pins", {"data": {"texts": '{"colour": "red"}'}, "headers": AUTH}, 422, "JSON object with keys among"),
    ("post", "/pins", {"data": {"queries": '["a", 3]'}, "headers": AUTH}, 422, "queries must be a list of strings"),
    ("post", "/pins", {"data": {"title": "  "}, "headers": AUTH}, 422, "needs an image or at least one"),
    ("post", "/pins", {"data": {"title": "x", "pin_id": "a\nb"}, "headers": AUTH}, 422, "body.pin_id: String should match"),
]


@pytest.mark.parametrize(("method", "url", "kwargs", "status", "message"), BAD_REQUESTS,
                         ids=[f"{m} {u} {s} {msg[:24]}" for m, u, _, s, msg in BAD_REQUESTS])
def test_bad_input_gets_a_clear_4xx(service, method, url, kwargs, status, message):
    client, _, index = service
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert len(index) == 30  # nothing was added


def test_streamed_oversize_body_without_length_is_refused(service):
    client, _, _ = service

    def chunks():
        for _ in range(30):
            yield b"x" * 10_000

    response = client.post("/embed/text", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "request body over" in response.json()["detail"]


@pytest.fixture(scope="module")
def real_service(tiny_checkpoint, catalog, tmp_path_factory):
    """The app on the real tiny-preset model and an index of the synthetic catalog embedded by it."""
    from pinclip.models.embedder import Embedder
    from pinclip.serve.embed import embed_pins_table
    from pinclip.serve.index import PinIndex

    folder = tmp_path_factory.mktemp("real-serve")
    embedder = Embedder.from_checkpoint(tiny_checkpoint)
    embed_pins_table(embedder, catalog["pins"], folder / "emb", shard_size=32, progress=False)
    index = PinIndex.from_embeddings(folder / "emb")
    app = create_app(embedder, index, load_pins_meta(catalog["pins"]), TOKEN, ServeLimits())
    with TestClient(app) as client:
        yield client, embedder, index


def test_text_search_embeds_the_query_as_a_search_query_on_the_real_model(real_service):
    client, embedder, index = real_service
    for q in ("red circle", "blue squares", "things"):
        expected_scores, expected_ids = index.search(embedder.embed_texts([q], field="queries"), 10)
        for body in (client.get("/search/text", params={"q": q, "k": 10}).json(),
                     client.post("/search/text", json={"q": q, "k": 10}).json()):
            assert [h["pin_id"] for h in body["results"]] == expected_ids[0]
            assert [h["score"] for h in body["results"]] == pytest.approx(expected_scores[0].tolist(), abs=1e-5)
        title_scores, _ = index.search(embedder.embed_texts([q], field="title"), 10)
        assert np.abs(title_scores - expected_scores).max() > 1e-3  # the field tag changes the query vector


def test_related_and_embed_on_the_real_model(real_service):
    client, embedder, index = real_service
    scores, ids = index.search_by_id("red-circle-0", 5)
    related = client.get("/related/red-circle-0", params={"k": 5}).json()["results"]
    assert [h["pin_id"] for h in related] == ids and "red-circle-0" not in ids
    assert [h["score"] for h in related] == pytest.approx(scores.tolist(), abs=1e-5)
    vectors = np.array(client.post("/embed/text", json={"texts": ["red circle"]}).json()["embeddings"])
    np.testing.assert_allclose(vectors, embedder.embed_texts(["red circle"]), atol=1e-6)


def test_a_tower_mix_is_served_like_any_checkpoint(tiny_checkpoint, catalog, tmp_path):
    """A mix folder (pinclip mix's served model): embedded, indexed and searched over HTTP as one wide vector."""
    from pinclip.eval.ensemble import calibrate_mixed
    from pinclip.models.embedder import Embedder
    from pinclip.models.tower_mix import MixedEmbedder, create_mixed
    from pinclip.serve.embed import embed_pins_table
    from pinclip.serve.index import PinIndex
    from pinclip.train.dataset import load_dataset

    folder = create_mixed(tiny_checkpoint, 0.5, tmp_path / "mixed")
    calibrate_mixed(folder, load_dataset(catalog["pins"], catalog["boards"], None))
    embedder = Embedder.from_checkpoint(folder)
    assert isinstance(embedder, MixedEmbedder) and embedder.dim > Embedder.from_checkpoint(tiny_checkpoint).dim
    embed_pins_table(embedder, catalog["pins"], tmp_path / "emb", shard_size=32, progress=False)
    index = PinIndex.from_embeddings(tmp_path / "emb")
    assert index.meta.dim == embedder.dim and index.meta.model_version == embedder.version
    app = create_app(embedder, index, load_pins_meta(catalog["pins"]), TOKEN, ServeLimits())
    with TestClient(app) as client:
        expected_scores, expected_ids = index.search(embedder.embed_texts(["red circle"], field="queries"), 5)
        body = client.get("/search/text", params={"q": "red circle", "k": 5}).json()
        assert [h["pin_id"] for h in body["results"]] == expected_ids[0]
        vectors = client.post("/v1/embeddings", json={"model": embedder.version, "input": ["red circle"],
                                                      "encoding_format": "float"}).json()["data"]
        assert len(vectors[0]["embedding"]) == embedder.dim
