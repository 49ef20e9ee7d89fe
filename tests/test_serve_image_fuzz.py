"""Every format Pillow can open, whole, cut short and with flipped bytes, on every image route: never a 5xx.

The corpus is tests/image_corpus.py: one small file per format in Image.OPEN (43 with this Pillow,
AVIF, DDS, BLP and SPIDER among them) and 15-19 damaged copies of each (cut short, bytes flipped,
header fields set to edge values, and pixel formats Pillow does not decode). An image that decodes
is embedded (200); anything else is a 422 naming the problem (413 for one over the pixel limit),
and no error body carries a file path or a Python repr.
"""

from __future__ import annotations

import base64
import re
from collections import Counter

import pytest
from fastapi.testclient import TestClient
from image_corpus import corpus, identified_as, targeted, variants
from PIL import Image
from serve_fakes import FakeEmbedder

from pinclip.quant import quantize
from pinclip.serve.app import ServeLimits, create_app
from pinclip.serve.index import PinIndex

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")  # Pillow on bad files
TOKEN = "fuzz-token"
LEAK = re.compile(r"/tmp/|/work/|/home/|site-packages| at 0x[0-9a-f]+|Traceback|<[a-z_.]+ object")
CORPUS = corpus()


@pytest.fixture(scope="module")
def client():
    fake = FakeEmbedder()
    titles = [f"pin {i}" for i in range(8)]
    index = PinIndex.build(quantize(fake.embed_texts(titles), fake.quant), [f"p{i}" for i in range(8)], fake.quant,
                           fake.version)
    app = create_app(fake, index, {}, TOKEN, ServeLimits(max_image_pixels=4_000_000))
    return TestClient(app, raise_server_exceptions=False)


def test_the_corpus_covers_every_format_pillow_opens():
    Image.init()
    assert set(CORPUS) == set(Image.OPEN) and {"AVIF", "DDS", "BLP", "SPIDER"} <= set(CORPUS)
    unrecognized = [fmt for fmt, data in CORPUS.items() if (identified_as(data) or "").upper() != fmt]
    assert unrecognized == []  # each sample really is opened as its format


@pytest.mark.parametrize("fmt", sorted(CORPUS))
def test_no_file_of_any_format_is_a_5xx(client, fmt):
    statuses = Counter()
    files = [CORPUS[fmt], *variants(CORPUS[fmt], seed=sum(fmt.encode())), *targeted(fmt, CORPUS[fmt])]
    for i, data in enumerate(files):
        response = client.post("/embed/image", files={"file": (f"upload-{i}", data)})
        statuses[response.status_code] += 1
        assert response.status_code in (200, 413, 422), (fmt, i, response.status_code, response.text)
        if response.status_code != 200:
            detail = response.json()["detail"]
            assert detail.startswith(f"uploaded file 'upload-{i}': ") and not LEAK.search(detail), detail
    assert sum(statuses.values()) == len(files) >= 16


@pytest.mark.parametrize("fmt", ["DDS", "BLP", "AVIF", "SPIDER", "PSD", "EPS"])
def test_formats_pillow_opens_but_may_not_decode_are_4xx_on_every_image_route(client, fmt):
    data = CORPUS[fmt]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    uri = f"data:image/x;base64,{base64.b64encode(data).decode()}"
    answers = [client.post("/embed/image", files={"file": ("f", data)}),
               client.post("/search/image", files={"file": ("f", data)}, data={"k": "3"}),
               client.post("/pins", files={"image": ("f", data)}, data={"title": "fuzzed"}, headers=auth),
               client.post("/v1/embeddings", json={"model": "fake-1", "input": [uri], "modality": "image"}),
               client.post("/v1/embeddings", json={"model": "fake-1", "input": [{"image": uri}], "modality": "pin"})]
    for response in answers:
        assert response.status_code in (200, 201, 400, 413, 422), (fmt, response.request.url, response.text)
        assert not LEAK.search(response.text)
    assert client.get("/health").status_code == 200  # the same client goes on being served


def test_an_image_over_pillows_bomb_limit_is_413_as_documented(client):
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
    response = client.post("/embed/image", files={"file": ("big.png", png + chunk(b"IEND", b""))})
    assert response.status_code == 413 and "image too large" in response.json()["detail"]
