"""The HTTP API and search page over an Embedder and an index backend (FastAPI).

    pinclip serve --index runs/demo/index --checkpoint runs/demo/train/final     # then open http://127.0.0.1:8000/

Endpoints (JSON; OpenAPI at /openapi.json, docs at /docs):
    GET  /health                          model version, index size and kind, batching
    POST /embed/text   {"texts", "dim", "int8"}      POST /embed/image  (multipart: file, dim, int8)
    GET|POST /search/text  q, k           POST /search/image (multipart: file, k)
    GET  /search/pin/{pin_id}?k=          neighbors of a stored pin, itself included
    GET  /related/{pin_id}?k=             related pins: neighbors with the pin itself left out
    POST /pins  (Authorization: Bearer)   add or replace a pin (image + texts), durable before the answer
    DELETE /pins/{pin_id}  (Bearer)       remove a pin, durable before the answer
    GET  /pins/{pin_id}   GET /images/{pin_id}   metadata and image of a pin, for the page
    POST /v1/embeddings   GET /v1/models[/{id}]  the OpenAI embeddings API (pinclip.serve.openai_api)
    GET  /metrics                         Prometheus text format (pinclip.serve.metrics)
Errors are {"detail": message} (the /v1 routes answer in OpenAI's {"error": {...}} shape): 401
missing or wrong token, 404 unknown pin, 409 another model version, 413 body over the limit, 422
invalid input, 503 writes disabled, the embedding queue full or a write failed (Retry-After), 507
a write refused because the index's disk is full (Retry-After; nothing was changed). The limits (k,
texts, dims, lengths) are in the OpenAPI schema. No error body carries a file path or a Python repr
(`scrub`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from pinclip.serve.service import PinService, ServeLimits, ServiceError

STATIC_DIR = Path(__file__).parent / "static"

__all__ = ["ServeLimits", "create_app", "ErrorBody"]


class ErrorBody(BaseModel):
    detail: str


ERROR_TEXT = {
    400: "the body cannot be parsed: not UTF-8 JSON, or broken multipart data",
    401: "missing or invalid bearer token",
    404: "unknown pin, or no image for it",
    409: "the write is for another model version than the index's",
    413: "request body over the size limit, or an image over the pixel limit",
    422: "invalid input: a field's type, length or range, or an undecodable image",
    503: "adding pins is disabled (no token configured), a write failed, or the embedding queue is full",
    507: "the index's disk is full: the write was refused, nothing changed; retry after Retry-After seconds",
}
REPR = re.compile(r"<[^<>]* at 0x[0-9a-f]+>|functools\.partial\([^()]*\)")
ABS_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.+-]+/)+[\w.+-]*")  # two or more segments: /tmp/x, /work/a/b.png


def scrub(message: str) -> str:
    """An error message without Python reprs or filesystem paths (routes such as /v1/models stay)."""
    message = REPR.sub("<internal>", message)
    return ABS_PATH.sub(lambda m: m.group(0) if _is_route(m.group(0)) else "<path>", message)


def _is_route(text: str) -> bool:
    return text.split("/")[1] in ("v1", "pins", "images", "search", "embed", "related", "health", "metrics")


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error statuses, each with the ErrorBody schema."""
    return {code: {"model": ErrorBody, "description": ERROR_TEXT[code]} for code in codes}


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over max_bytes, by header or as it streams in."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length", b"0")
        if not length.isdigit():
            return await JSONResponse({"detail": "invalid Content-Length"}, status_code=400)(scope, receive, send)
        if int(length) > self.max_bytes:
            too_big = JSONResponse({"detail": f"request body over {self.max_bytes:,} bytes"}, status_code=413)
            return await too_big(scope, receive, send)
        received = 0

        async def counted_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise ServiceError(413, f"request body over {self.max_bytes:,} bytes")
            return message

        await self.app(scope, counted_receive, send)


FIELD = re.compile(r"^[A-Za-z_][\w-]*$")


def _loc(error: dict) -> str:
    """body.input.0, leaving out pydantic's names for union members and validators."""
    return ".".join(str(part) for part in error.get("loc", ()) if isinstance(part, int) or FIELD.match(str(part)))


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one readable line per problem, e.g. 'body.texts: Field required'."""
    lines = ["request body is not valid JSON" if e.get("type") == "json_invalid" else f"{_loc(e)}: {e.get('msg', 'invalid')}"
             for e in exc.errors()]
    message = scrub("; ".join(dict.fromkeys(lines)) or "invalid request")
    if request.url.path.startswith("/v1/"):
        from pinclip.serve.openai_api import openai_error

        return openai_error(400, message)
    return JSONResponse({"detail": message}, status_code=422)


async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
    if request.url.path.startswith("/v1/"):
        from pinclip.serve.openai_api import openai_error

        return openai_error(exc.status, scrub(exc.message), exc.headers)
    return JSONResponse({"detail": scrub(exc.message)}, status_code=exc.status, headers=exc.headers)


async def method_not_allowed(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """405 whose Allow header lists the methods of the routes for this path (Starlette names one route's).

    A path like /pins/a/image matches both GET /pins/{pin_id}/image and DELETE /pins/{pin_id} (pin ids
    may hold "/"); the routes that match with the least text in their parameters are the ones meant.
    """
    if exc.status_code != 405:
        if request.url.path.startswith("/v1/"):
            from pinclip.serve.openai_api import openai_error

            return openai_error(exc.status_code, str(exc.detail), exc.headers)
        return await http_exception_handler(request, exc)
    candidates: dict[int, set[str]] = {}
    for route in request.app.routes:
        if not isinstance(route, APIRoute):
            continue
        match, child = route.matches({**request.scope, "method": next(iter(route.methods))})
        if match != Match.NONE:
            absorbed = sum(len(str(v)) for v in child.get("path_params", {}).values())
            candidates.setdefault(absorbed, set()).update(route.methods)
    allowed = ", ".join(sorted(candidates[min(candidates)])) if candidates else ""
    return JSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": allowed})


async def too_deep(request: Request, exc: RecursionError) -> JSONResponse:
    return await service_error(request, ServiceError(422, "the JSON is nested too deeply"))


def create_app(embedder: Any, index: Any, pins_meta: dict[str, dict], token: str | None,
               limits: ServeLimits | None = None, image_roots: list[str] | None = None) -> FastAPI:
    """The service over `index` (an IndexBackend, or a PinIndex served from memory only).

    pins_meta maps pin_id -> {"title", "image" (path or bytes)}; image files are served only from
    under `image_roots`; `token` guards POST and DELETE /pins.
    """
    from pinclip import __version__
    from pinclip.serve.faiss_backend import FaissBackend
    from pinclip.serve.index import PinIndex
    from pinclip.serve.metrics import RequestMetrics, ServeMetrics, metrics_route
    from pinclip.serve.openai_api import openai_routes
    from pinclip.serve.routes import embed_routes, pin_routes, search_routes

    limits = limits or ServeLimits()
    backend = FaissBackend(index) if isinstance(index, PinIndex) else index
    svc = PinService(embedder, backend, pins_meta, limits, image_roots)
    app = FastAPI(title="PinCLIP", version=__version__,
                  description="Multimodal pin embeddings: embed, search, related pins, cold-start adds.")
    app.state.service = svc
    metrics = ServeMetrics(svc)
    svc.on_batch = metrics.observe_batch
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: counts the 413s of the size limit too
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RecursionError, too_deep)
    app.add_exception_handler(StarletteHTTPException, method_not_allowed)
    embed_routes(app, svc)
    search_routes(app, svc)
    pin_routes(app, svc, token)
    openai_routes(app, svc)
    metrics_route(app, metrics)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
