"""GET /metrics: requests and latencies per route, batch sizes, queue depth, index size and write-log bytes."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from serve_fakes import FakeEmbedder

from pinclip.quant import quantize
from pinclip.serve.app import create_app
from pinclip.serve.faiss_backend import FaissBackend
from pinclip.serve.index import IndexConfig, PinIndex

AUTH = {"Authorization": "Bearer tok"}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from Prometheus text format."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_requests_batches_and_the_durable_index(tmp_path):
    fake = FakeEmbedder()
    titles = [f"pin {i}" for i in range(6)]
    index = PinIndex.build(quantize(fake.embed_texts(titles), fake.quant), [f"p{i}" for i in range(6)], fake.quant,
                           fake.version, config=IndexConfig(kind="flat"))
    FaissBackend.create(tmp_path / "idx", index)
    backend = FaissBackend.open(tmp_path / "idx")
    http = TestClient(create_app(fake, backend, {}, "tok"))
    assert http.post("/embed/text", json={"texts": ["a", "b", "c"]}).status_code == 200
    assert http.get("/search/text", params={"q": "pin 1"}).status_code == 200
    assert http.get("/pins/nope").status_code == 404
    assert http.post("/pins", data={"pin_id": "new", "title": "fresh"}, headers=AUTH).status_code == 201
    response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    got = samples(response.text)
    assert got[("pinclip_requests_total", (("method", "POST"), ("route", "/embed/text"), ("status", "200")))] == 1
    assert got[("pinclip_requests_total", (("method", "GET"), ("route", "/pins/{pin_id:path}"), ("status", "404")))] == 1
    assert got[("pinclip_request_seconds_count", (("method", "GET"), ("route", "/search/text")))] == 1
    assert got[("pinclip_embed_batch_size_sum", (("kind", "text"),))] == 4  # 3 texts in one call, then 1 query
    assert got[("pinclip_embed_batch_size_count", (("kind", "text"),))] == 2
    assert got[("pinclip_embed_batch_size_sum", (("kind", "pin"),))] == 1  # the new pin
    assert got[("pinclip_batcher_queue_depth", (("field", "title"), ("kind", "text")))] == 0
    assert got[("pinclip_index_size", ())] == 7
    assert got[("pinclip_write_log_bytes", ())] == backend.log.size > 0
    assert not any(labels and dict(labels).get("route") == "/metrics" for _, labels in got)
    backend.close()


def test_unmatched_paths_share_one_label():
    fake = FakeEmbedder()
    index = PinIndex.build(quantize(fake.embed_texts(["x"]), fake.quant), ["p0"], fake.quant, fake.version)
    http = TestClient(create_app(fake, index, {}, None))
    for path in ("/a", "/b/c", "/d"):
        assert http.get(path).status_code == 404
    got = samples(http.get("/metrics").text)
    assert got[("pinclip_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 3
    assert got[("pinclip_write_log_bytes", ())] == 0  # an index held in memory only
