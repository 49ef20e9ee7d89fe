"""A micro-batcher: concurrent requests' items embedded together in one model call.

    batcher = MicroBatcher(lambda texts: embedder.embed_texts(texts), max_batch=32, max_wait_ms=5)
    vector = batcher.submit("red apple")     # blocks; returns this item's row of the batch result

One worker thread takes the first waiting item, then keeps collecting until `max_batch` items or
`max_wait_ms` have passed, calls `fn` once on the list and hands each caller its row. The queue is
bounded: `submit` raises QueueFull at once when `max_queue` items are waiting, so an overloaded
server answers 503 instead of growing without limit. An exception from `fn` goes to every caller
of that batch. With max_batch=1 it is a plain serialized call (the "no batching" setting).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any


class QueueFull(Exception):
    """The batcher's queue is full: the caller should answer 503 and let the client retry."""


class MicroBatcher:
    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], max_batch: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 256, name: str = "batcher", on_batch: Callable[[int], None] | None = None) -> None:
        self.fn, self.max_batch, self.max_wait = fn, max(1, max_batch), max_wait_ms / 1000.0
        self.on_batch = on_batch  # told each batch's size (the /metrics histogram)
        self.items: queue.Queue[tuple[Any, Future]] = queue.Queue(maxsize=max(1, max_queue))
        self.batch_sizes: list[int] = []  # recent batch sizes, for /health and tests
        self.worker = threading.Thread(target=self._run, name=name, daemon=True)
        self.worker.start()

    def submit(self, item: Any, timeout: float | None = None) -> Any:
        """This item's result; QueueFull when the queue is at its limit."""
        return self.submit_all([item], timeout)[0]

    def submit_all(self, items: list[Any], timeout: float | None = None) -> list[Any]:
        """The results of several items, queued together (they may share one call); QueueFull when the
        queue cannot take them all (the ones already queued are still computed, and dropped)."""
        futures: list[Future] = []
        for item in items:
            futures.append(Future())
            try:
                self.items.put_nowait((item, futures[-1]))
            except queue.Full:
                raise QueueFull(f"{self.items.maxsize} requests are already waiting") from None
        return [future.result(timeout) for future in futures]

    def _collect(self) -> list[tuple[Any, Future]]:
        batch = [self.items.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                batch.append(self.items.get(timeout=left) if left > 0 else self.items.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while True:
            batch = self._collect()
            self.batch_sizes = (self.batch_sizes + [len(batch)])[-256:]
            if self.on_batch is not None:
                try:
                    self.on_batch(len(batch))
                except Exception:  # noqa: BLE001 - a metrics hook must never stop the worker
                    pass
            try:
                results = self.fn([item for item, _ in batch])
                for (_, future), result in zip(batch, results, strict=True):
                    future.set_result(result)
            except BaseException as err:  # noqa: BLE001 - every waiting caller must hear of it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
