"""Error answers: 507 on a full disk and writes that resume, one text limit on every route, no leaks in bodies."""

from __future__ import annotations

import errno
import os
import re
import threading
import time

import pytest
from fastapi.testclient import TestClient
from serve_fakes import FakeEmbedder

from pinclip.quant import quantize
from pinclip.serve.app import ServeLimits, create_app, scrub
from pinclip.serve.faiss_backend import FaissBackend
from pinclip.serve.index import IndexConfig, PinIndex
from pinclip.serve.openai_api import TokenCounter

TOKEN = "tok"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LEAK = re.compile(r"/tmp/|/work/|site-packages| at 0x[0-9a-f]+|functools|function-(?:after|before)|Traceback")
LIMITS = ServeLimits(max_text_chars=300)


def small_index(fake: FakeEmbedder) -> PinIndex:
    titles = [f"pin number {i}" for i in range(10)]
    return PinIndex.build(quantize(fake.embed_texts(titles), fake.quant), [f"p{i}" for i in range(10)], fake.quant,
                          fake.version, config=IndexConfig(kind="flat"))


@pytest.fixture
def served(tmp_path):
    """The app over a durable index folder: (client, backend, folder)."""
    fake = FakeEmbedder()
    FaissBackend.create(tmp_path / "idx", small_index(fake))
    backend = FaissBackend.open(tmp_path / "idx")
    yield TestClient(create_app(fake, backend, {}, TOKEN, LIMITS), raise_server_exceptions=False), backend, tmp_path
    backend.close()


@pytest.fixture(scope="module")
def client():
    fake = FakeEmbedder()
    return TestClient(create_app(fake, small_index(fake), {}, TOKEN, LIMITS), raise_server_exceptions=False)


def failing(call, fd: int, code: int):
    def wrapped(target, *args):
        if target == fd:
            raise OSError(code, os.strerror(code), "/tmp/some/index/log-000001.wal")
        return call(target, *args)
    return wrapped


def test_a_full_disk_is_507_with_retry_after_and_writes_resume_once_space_is_free(served, monkeypatch):
    http, backend, folder = served
    assert http.post("/pins", data={"pin_id": "a", "title": "apple"}, headers=AUTH).status_code == 201
    monkeypatch.setattr(os, "write", failing(os.write, backend.log.fd, errno.ENOSPC))
    full = http.post("/pins", data={"pin_id": "b", "title": "banana"}, headers=AUTH)
    assert full.status_code == 507 and full.headers["retry-after"] == "10"
    assert "disk is full" in full.json()["detail"] and not LEAK.search(full.text)
    monkeypatch.undo()
    monkeypatch.setattr(os, "fsync", failing(os.fsync, backend.log.fd, errno.ENOSPC))
    assert http.post("/pins", data={"pin_id": "c", "title": "cherry"}, headers=AUTH).status_code == 507
    assert http.delete("/pins/a", headers=AUTH).status_code == 507
    assert http.get("/pins/b").status_code == 404 and http.get("/pins/c").status_code == 404  # never applied
    monkeypatch.undo()  # space is free again: the very next write goes through
    assert http.post("/pins", data={"pin_id": "d", "title": "date"}, headers=AUTH).status_code == 201
    backend.close()
    again = FaissBackend.open(folder / "idx")
    assert "a" in again and "d" in again and "b" not in again and "c" not in again
    again.close()


def test_an_io_error_is_503_with_retry_after_and_no_path(served, monkeypatch):
    http, backend, _ = served
    monkeypatch.setattr(os, "fsync", failing(os.fsync, backend.log.fd, errno.EIO))
    response = http.post("/pins", data={"pin_id": "x", "title": "x"}, headers=AUTH)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "Input/output error" in response.json()["detail"] and not LEAK.search(response.text)


@pytest.mark.parametrize("body", [
    {"model": "fake-1", "input": "x" * 301},
    {"model": "fake-1", "input": ["fine", "y" * 301]},
    {"model": "fake-1", "input": [{"title": "t" * 301}], "modality": "pin"},
    {"model": "fake-1", "input": [{"queries": ["q" * 301]}], "modality": "pin"},
])
def test_v1_texts_have_the_one_character_limit_of_every_route(client, body):
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 400 and "300" in response.json()["error"]["message"]
    assert client.post("/embed/text", json={"texts": ["z" * 301]}).status_code == 422  # the same limit


def test_v1_accepts_texts_at_the_limit(client):
    response = client.post("/v1/embeddings", json={"model": "fake-1", "input": ["x" * 300]})
    assert response.status_code == 200 and len(response.json()["data"]) == 1


def test_get_v1_model_by_id(client):
    listed = client.get("/v1/models").json()["data"][0]
    assert client.get(f"/v1/models/{listed['id']}").json() == listed
    missing = client.get("/v1/models/gpt-4")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("body", [{"model": "fake-1", "input": 123}, {"model": "fake-1", "input": None},
                                  {"model": "fake-1", "input": [{"title": 1}], "modality": "pin"},
                                  {"model": "fake-1", "input": [[1, 2]]}, {"input": "x"}])
def test_v1_validation_errors_carry_no_reprs(client, body):
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 400 and not LEAK.search(response.text), response.text
    assert response.json()["error"]["message"].startswith("body.")


@pytest.mark.parametrize("pin_id", [".", "..", "a/../b", "./x"])
def test_pin_ids_with_dot_segments_are_refused(client, pin_id):
    response = client.post("/pins", data={"pin_id": pin_id, "title": "t"}, headers=AUTH)
    assert response.status_code == 422 and "path segment" in response.json()["detail"]


def test_scrub_keeps_routes_and_drops_paths_and_reprs():
    assert scrub("see GET /v1/models and /pins/a") == "see GET /v1/models and /pins/a"
    assert scrub("open /tmp/a/b.wal failed") == "open <path> failed"
    assert scrub("bad <function f at 0x7f00ab>") == "bad <internal>"


class StatefulTokenizer:
    """Like a fast tokenizer: each call sets its truncation state, which a concurrent call would change."""

    def __init__(self) -> None:
        self.truncation, self.calls, self.clashes = None, 0, 0

    def __call__(self, texts, truncation=False, **kwargs):
        self.truncation, self.calls = truncation, self.calls + 1
        time.sleep(0.001)
        self.clashes += self.truncation != truncation  # another thread changed it meanwhile
        return {"input_ids": [t.split() for t in texts]}


def test_token_counts_use_a_private_tokenizer_never_the_models():
    fake = FakeEmbedder()
    shared = StatefulTokenizer()
    fake.model = type("M", (), {"backbone": type("B", (), {"tokenizer": shared})()})()
    counter = TokenCounter(fake)
    assert counter.tokenizer is not shared
    results = []
    threads = [threading.Thread(target=lambda: results.append(counter(["a b c", "d e"]))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [5] * 8 and shared.calls == 0 and counter.tokenizer.clashes == 0


def test_k_must_be_a_json_integer_not_a_boolean(client):
    assert client.post("/search/text", json={"q": "pin", "k": True}).status_code == 422
    assert client.post("/search/text", json={"q": "pin", "k": 2}).status_code == 200
    assert client.get("/search/text", params={"q": "pin", "k": "true"}).status_code == 422


def test_pin_texts_have_the_one_limit_inside_the_texts_object_too(client):
    for texts in ('{"title": "%s"}' % ("t" * 301), '{"queries": ["ok", "%s"]}' % ("q" * 301)):
        response = client.post("/pins", data={"texts": texts}, headers=AUTH)
        assert response.status_code == 422 and "the limit is 300" in response.json()["detail"]
    assert client.post("/pins", data={"texts": '{"title": "%s"}' % ("t" * 300)}, headers=AUTH).status_code == 201
