"""GET /metrics: the server's Prometheus metrics in the text exposition format (as Infinity, TEI and vLLM expose).

    curl -s http://127.0.0.1:8000/metrics

    pinclip_requests_total{route,method,status}   requests answered, by route template ("/pins/{pin_id:path}")
    pinclip_request_seconds{route,method}         request latency histogram, until the last body byte is sent
    pinclip_embed_batch_size{kind}                items per model call (text, image, pin): what batching achieves
    pinclip_batcher_queue_depth{kind,field}       items waiting for the model, read at scrape time
    pinclip_index_size                            live pins in the index
    pinclip_write_log_bytes                       bytes in the index folder's write logs (0 when in memory only)

Each app has its own registry (several apps in one process, as in the tests, do not share counts).
Requests that match no route count under route "unmatched"; /metrics itself is not counted.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceGauges:
    """A collector read at scrape time: queue depths, index size and write-log bytes of a PinService."""

    def __init__(self, svc: Any) -> None:
        self.svc = svc

    def collect(self) -> Any:
        depth = GaugeMetricFamily("pinclip_batcher_queue_depth", "items waiting for the model", labels=["kind", "field"])
        with self.svc.batchers_lock:
            batchers = dict(self.svc.batchers)
        for (kind, field), batcher in sorted(batchers.items()):
            depth.add_metric([kind, field], batcher.items.qsize())
        yield depth
        yield GaugeMetricFamily("pinclip_index_size", "live pins in the index", value=len(self.svc.backend))
        log_bytes = getattr(self.svc.backend, "log_bytes", None)
        yield GaugeMetricFamily("pinclip_write_log_bytes", "bytes in the index folder's write logs",
                                value=log_bytes() if log_bytes else 0)


class ServeMetrics:
    """The registry and the instruments of one app."""

    def __init__(self, svc: Any) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("pinclip_requests", "requests answered", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("pinclip_request_seconds", "request latency", ["route", "method"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("pinclip_embed_batch_size", "items per model call", ["kind"],
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.registry.register(ServiceGauges(svc))

    def observe_batch(self, kind: str, size: int) -> None:
        self.batch_size.labels(kind).observe(size)

    def exposition(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """ASGI middleware: count each request and time it, labelled by the route template it matched."""

    def __init__(self, app: Any, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") == "/metrics":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def record_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - started)


def metrics_route(app: FastAPI, metrics: ServeMetrics) -> None:
    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return metrics.exposition()
