"""The micro-batcher: concurrent items share model calls, a full queue is refused, errors reach every caller."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_fakes import FakeEmbedder

from pinclip.quant import quantize
from pinclip.serve.app import ServeLimits, create_app
from pinclip.serve.batcher import MicroBatcher, QueueFull
from pinclip.serve.index import PinIndex


def test_concurrent_items_are_embedded_together_and_each_gets_its_own_row():
    calls = []

    def double(items):
        calls.append(len(items))
        time.sleep(0.02)  # a model call long enough for the other callers to queue up
        return [2 * x for x in items]

    batcher = MicroBatcher(double, max_batch=8, max_wait_ms=20)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(batcher.submit, range(16)))
    assert results == [2 * x for x in range(16)]
    assert sum(calls) == 16 and max(calls) > 1 and max(calls) <= 8 and len(calls) < 16


def test_batch_size_one_calls_once_per_item():
    calls = []
    batcher = MicroBatcher(lambda items: calls.append(len(items)) or items, max_batch=1)
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(batcher.submit, range(8))) == list(range(8))
    assert calls == [1] * 8


def test_a_full_queue_is_refused_at_once():
    release = threading.Event()
    batcher = MicroBatcher(lambda items: release.wait() and items, max_batch=1, max_queue=2)
    pool = ThreadPoolExecutor(3)
    running = [pool.submit(batcher.submit, 0)]
    deadline = time.monotonic() + 30  # a loaded machine may take a while to start the callers
    while not batcher.batch_sizes and time.monotonic() < deadline:  # the worker has taken it into the model
        time.sleep(0.01)
    running += [pool.submit(batcher.submit, i) for i in (1, 2)]  # two waiting
    while batcher.items.qsize() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert batcher.items.qsize() == 2, "the two waiting requests never reached the queue"
    with pytest.raises(QueueFull, match="2 requests are already waiting"):
        batcher.submit(99)
    release.set()
    assert sorted(f.result(timeout=10) for f in running) == [0, 1, 2]
    pool.shutdown()


def test_an_error_in_the_model_call_reaches_every_caller_of_the_batch():
    def broken(items):
        time.sleep(0.01)
        raise RuntimeError("model failed")

    batcher = MicroBatcher(broken, max_batch=4, max_wait_ms=10)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batcher.submit, i) for i in range(4)]
    for future in futures:
        with pytest.raises(RuntimeError, match="model failed"):
            future.result()
    assert batcher.worker.is_alive()  # the worker goes on after a failed batch


def test_the_server_answers_503_with_retry_after_when_the_queue_is_full():
    fake = FakeEmbedder(delay_s=0.3)
    index = PinIndex.build(quantize(fake.embed_texts(["a", "b"]), fake.quant), ["a", "b"], fake.quant, fake.version)
    limits = ServeLimits(batch_size=1, max_queue=1)
    client = TestClient(create_app(fake, index, {}, None, limits))
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda i: client.get("/search/text", params={"q": f"word {i}"}), range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) >= 2 and statuses.count(503) >= 1 and set(statuses) <= {200, 503}
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "server busy" in busy.json()["detail"]


def test_batched_server_results_equal_unbatched_ones():
    fake = FakeEmbedder()
    index = PinIndex.build(quantize(fake.embed_texts(["a", "b"]), fake.quant), ["a", "b"], fake.quant, fake.version)
    client = TestClient(create_app(fake, index, {}, None, ServeLimits(batch_size=16, batch_wait_ms=20)))
    texts = [f"text number {i}" for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        rows = list(pool.map(lambda t: client.post("/embed/text", json={"texts": [t]}).json()["embeddings"][0], texts))
    np.testing.assert_allclose(rows, fake.embed_texts(texts), atol=1e-6)
    assert max(n for kind, n in fake.calls if kind == "text") > 1  # some requests did share a call
