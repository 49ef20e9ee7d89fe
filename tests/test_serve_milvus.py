"""The Milvus backend on Milvus Lite (a local file): same results as the FAISS path, writes, the server on it."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_fakes import FakeEmbedder, synthetic_pins, write_pins_parquet

from pinclip.cli import main
from pinclip.quant import quantize
from pinclip.serve.app import create_app
from pinclip.serve.backend import VersionConflict, open_backend
from pinclip.serve.embed import embed_pins_table
from pinclip.serve.index import IndexConfig, PinIndex, load_embeddings

pytest.importorskip("milvus_lite")
FAKE = FakeEmbedder()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("milvus")
    pins = write_pins_parquet(synthetic_pins(root, 60), root / "pins.parquet")
    embed_pins_table(FAKE, pins, root / "emb", shard_size=16, progress=False)
    assert main(["index", "build", "--embeddings", str(root / "emb"), "--backend", "milvus",
                 "--uri", str(root / "pins.db"), "--collection", "demo"]) == 0
    faiss = PinIndex.build(*_codes(root), config=IndexConfig(kind="flat"))
    return root, faiss


def _codes(root):
    emb = load_embeddings(root / "emb")
    return emb.codes, emb.pin_ids, emb.quant, emb.model_version


def test_search_matches_the_faiss_path(built):
    root, faiss = built
    milvus = open_backend("milvus", uri=str(root / "pins.db"), collection="demo")
    try:
        assert len(milvus) == 60 and milvus.meta.kind == "milvus-flat" and milvus.meta.model_version == "fake-1"
        queries = FAKE.embed_texts(["red circle", "blue stripe", "green square", "purple"])
        m_scores, m_ids = milvus.search(queries, 10)
        f_scores, f_ids = faiss.search(queries, 10)
        assert m_ids == f_ids
        np.testing.assert_allclose(m_scores, f_scores, atol=1e-5)
        _, related = milvus.search_by_id("p004", 5)
        assert "p004" not in related and related == faiss.search_by_id("p004", 5)[1]
    finally:
        milvus.close()


def test_puts_replacements_and_deletes_persist_in_the_file(built):
    root, _ = built
    milvus = open_backend("milvus", uri=str(root / "pins.db"), collection="demo")
    codes = quantize(FAKE.embed_texts(["magenta zigzag", "teal kayak"]), FAKE.quant)
    milvus.put(["z1", "p001"], codes, [{"title": "magenta zigzag"}, {"title": "teal kayak"}], "fake-1")
    assert milvus.delete(["p002", "nope"]) == 1 and len(milvus) == 60
    with pytest.raises(VersionConflict):
        milvus.put(["z2"], codes[:1], [{}], "fake-0")
    milvus.close()
    again = open_backend("milvus", uri=str(root / "pins.db"), collection="demo")
    try:
        assert len(again) == 60 and "p002" not in again and "z1" in again
        assert again.search(FAKE.embed_texts(["teal kayak"]), 1)[1] == [["p001"]]
        assert again.card("z1") == {"title": "magenta zigzag", "image": None}
    finally:
        again.close()


def test_the_server_runs_on_the_milvus_backend(built):
    root, _ = built
    backend = open_backend("milvus", uri=str(root / "pins.db"), collection="demo")
    client = TestClient(create_app(FAKE, backend, {}, "tok"))
    try:
        assert client.get("/health").json()["backend"] == "milvus"
        added = client.post("/pins", data={"pin_id": "m1", "title": "orange wagon"},
                            headers={"Authorization": "Bearer tok"})
        assert added.status_code == 201
        hits = client.get("/search/text", params={"q": "orange wagon", "k": 3}).json()["results"]
        assert hits[0]["pin_id"] == "m1" and hits[0]["title"] == "orange wagon"
        assert client.delete("/pins/m1", headers={"Authorization": "Bearer tok"}).status_code == 200
        assert client.get("/related/m1").status_code == 404
    finally:
        backend.close()


def test_missing_collection_and_missing_uri_are_clear_errors(built, capsys):
    root, _ = built
    assert main(["serve", "--backend", "milvus", "--uri", str(root / "pins.db"), "--collection", "nothing",
                 "--checkpoint", str(root)]) == 2
    assert main(["index", "build", "--embeddings", str(root / "emb"), "--backend", "milvus"]) == 2
    err = capsys.readouterr().err
    assert "needs --uri" in err
