"""Input anyone can send: lone surrogates, deeply nested JSON, pin images outside the table's folder."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from serve_fakes import FakeEmbedder, synthetic_pins, write_pins_parquet

from pinclip.serve.app import create_app
from pinclip.serve.index import PinIndex
from pinclip.serve.serve_cli import load_pins_meta
from pinclip.serve.service import image_roots_of

TOKEN = "tok"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEEP = "[" * 200_000 + "]" * 200_000


@pytest.fixture
def hostile(tmp_path):
    """A served table whose rows point at a file outside its folder, a symlink out, and a non-image."""
    folder = tmp_path / "table"
    pins = synthetic_pins(folder, 6)
    secret = tmp_path / "secret.png"
    secret.write_bytes((folder / "img" / "p000.png").read_bytes())  # an image, but not under the folder
    (folder / "img" / "link.png").symlink_to(secret)
    (folder / "img" / "notes.png").write_text("root:x:0:0:root:/root:/bin/bash\n")
    pins[1]["image"] = str(secret)
    pins[2]["image"] = "img/link.png"
    pins[3]["image"] = "img/notes.png"
    pins[4]["image"] = "../secret.png"
    pins_path = write_pins_parquet(pins, folder / "pins.parquet")
    fake = FakeEmbedder()
    index = PinIndex.build(__import__("numpy").zeros((6, 32), "int8"), [p["pin_id"] for p in pins], fake.quant,
                           fake.version)
    app = create_app(fake, index, load_pins_meta(pins_path), TOKEN, image_roots=image_roots_of(pins_path))
    return TestClient(app, raise_server_exceptions=False)


SURROGATE_REQUESTS = [
    ("/search/text", b'{"q": "\\ud800", "k": 3}'),
    ("/search/text", b'{"q": "ok \\udfff", "k": 3}'),
    ("/embed/text", b'{"texts": ["\\ud800"]}'),
    ("/embed/text", b'{"texts": ["fine", "x\\udbff"]}'),
    ("/v1/embeddings", b'{"model": "fake-1", "input": "\\ud800"}'),
]


@pytest.mark.parametrize(("url", "body"), SURROGATE_REQUESTS)
def test_a_lone_surrogate_is_a_4xx_not_a_500(hostile, url, body):
    response = hostile.post(url, content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert "surrogate" in response.text or "unicode" in response.text.lower()


def test_a_lone_surrogate_in_pin_fields_is_a_4xx(hostile):
    response = hostile.post("/pins", data={"texts": '{"title": "\\ud800"}'}, headers=AUTH)
    assert response.status_code == 422 and "surrogate" in response.json()["detail"]


@pytest.mark.parametrize("form", [{"texts": "[" * 3000 + "]" * 3000}, {"queries": "[" * 1000 + "]" * 1000},
                                  {"annotations": "[" * 1000 + "]" * 1000}, {"texts": DEEP}])
def test_deeply_nested_json_in_pin_fields_is_a_4xx(hostile, form):
    response = hostile.post("/pins", data=form, headers=AUTH)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["detail"]


def test_nested_json_within_the_length_limit_is_refused_by_depth(hostile):
    response = hostile.post("/pins", data={"texts": "[" * 3000 + "]" * 3000}, headers=AUTH)
    assert response.status_code == 422 and "nested too deeply" in response.json()["detail"]


@pytest.mark.parametrize("url", ["/embed/text", "/search/text", "/v1/embeddings"])
def test_deeply_nested_json_body_is_a_4xx(hostile, url):
    response = hostile.post(url, content=DEEP.encode(), headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize(("pin_id", "why"), [("p001", "outside"), ("p002", "outside"), ("p003", "no image"),
                                             ("p004", "outside")])
def test_the_image_route_serves_only_images_under_the_tables_folder(hostile, pin_id, why):
    response = hostile.get(f"/images/{pin_id}")
    assert response.status_code == 404 and why in response.json()["detail"]
    assert b"root:" not in response.content and b"PNG" not in response.content


def test_an_image_inside_the_folder_is_served_with_its_sniffed_type(hostile):
    response = hostile.get("/images/p000")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG")


def test_the_connection_survives_a_refused_request(hostile):
    """A 4xx keeps the client usable (a 500 from an unencodable echo used to end the connection)."""
    assert hostile.post("/search/text", content=b'{"q": "\\ud800"}',
                        headers={"content-type": "application/json"}).status_code == 422
    assert hostile.get("/search/text", params={"q": "red circle", "k": 2}).status_code == 200
