"""The HTTP API and search page over an Embedder, a PinIndex and pin metadata (FastAPI).

    pinclip serve --index runs/demo/index --checkpoint runs/demo/train/final     # then open http://127.0.0.1:8000/

Endpoints (JSON; OpenAPI at /openapi.json, docs at /docs):
    GET  /health                          model version, index size and kind
    POST /embed/text   {"texts", "dim", "int8"}      POST /embed/image  (multipart: file, dim, int8)
    GET|POST /search/text  q, k           POST /search/image (multipart: file, k)
    GET  /search/pin/{pin_id}?k=          neighbors of a stored pin, itself included
    GET  /related/{pin_id}?k=             related pins: neighbors with the pin itself left out
    POST /pins  (Authorization: Bearer)   add a pin (image + texts), embedded and indexed at once
    GET  /pins/{pin_id}   GET /pins/{pin_id}/image   metadata and image of a pin, for the page
Bad input gets a 4xx with {"detail": message}: oversize bodies 413, unknown pins 404, invalid
fields or images 422, a missing or wrong token 401, adding pins without a configured token 503.
"""

from __future__ import annotations

import hmac
import json
import mimetypes
import threading
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from pinclip.data.images import ImageError, open_image
from pinclip.data.schema import LIST_FIELDS, STRING_FIELDS, TEXT_FIELDS
from pinclip.quant import quantize
from pinclip.serve.embed import pin_text

STATIC_DIR = Path(__file__).parent / "static"


@dataclass
class ServeLimits:
    max_body_bytes: int = 10 * 1024 * 1024  # whole request, uploads included
    max_k: int = 100
    max_texts: int = 32  # texts per /embed/text request
    max_text_chars: int = 2000
    max_image_pixels: int = 20_000_000
    max_pin_id_chars: int = 200


class TextsRequest(BaseModel):
    texts: list[str]
    dim: int | None = None  # a Matryoshka prefix of the full dimension
    int8: bool = False


class TextQuery(BaseModel):
    q: str
    k: int = 10


def bad_input(message: str, status: int = 422) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over max_bytes, by header or as it streams in."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length", b"0")
        too_big = JSONResponse({"detail": f"request body over {self.max_bytes:,} bytes"}, status_code=413)
        if not length.isdigit():
            return await JSONResponse({"detail": "invalid Content-Length"}, status_code=400)(scope, receive, send)
        if int(length) > self.max_bytes:
            return await too_big(scope, receive, send)
        received = 0

        async def counted_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise bad_input(f"request body over {self.max_bytes:,} bytes", 413)
            return message

        await self.app(scope, counted_receive, send)


class PinService:
    """What the endpoints do, without HTTP: embed, search and add pins under one index lock."""

    def __init__(self, embedder: Any, index: Any, pins_meta: dict[str, dict], limits: ServeLimits) -> None:
        self.embedder, self.index, self.pins_meta, self.limits = embedder, index, pins_meta, limits
        self.lock = threading.Lock()  # FAISS add is not safe alongside searches

    def check_k(self, k: int) -> int:
        if not 1 <= k <= self.limits.max_k:
            raise bad_input(f"k must be between 1 and {self.limits.max_k}, got {k}")
        return k

    def check_text(self, text: str, name: str) -> str:
        if not text or not text.strip():
            raise bad_input(f"{name} must be a non-empty string")
        if len(text) > self.limits.max_text_chars:
            raise bad_input(f"{name} is {len(text)} characters; the limit is {self.limits.max_text_chars}", 413)
        return text

    def read_image(self, upload: UploadFile) -> Any:
        """The uploaded image as RGB (pixel guard applied); 422/413 for empty, corrupt or huge files."""
        return self.read_upload(upload)[0]

    def read_upload(self, upload: UploadFile) -> tuple[Any, bytes]:
        data = upload.file.read(self.limits.max_body_bytes + 1)
        if not data:
            raise bad_input(f"uploaded file {upload.filename!r} is empty")
        try:
            return open_image(data, self.limits.max_image_pixels), data
        except ImageError as err:
            status = 413 if err.reason.startswith("image too large") else 422
            raise bad_input(f"uploaded file {upload.filename!r}: {err.reason}", status) from None

    def shape_vectors(self, vectors: np.ndarray, dim: int | None, int8: bool) -> dict[str, Any]:
        """Matryoshka prefix (renormalized) and optional int8 codes of embeddings (N, D)."""
        full = self.embedder.dim
        allowed = list(getattr(self.embedder, "dims", None) or range(1, full + 1))  # trained Matryoshka dims
        if dim is not None and dim not in allowed:
            shown = ", ".join(map(str, allowed)) if len(allowed) < 10 else f"1 to {full}"
            raise bad_input(f"dim must be one of {shown}, got {dim}")
        out = vectors[:, : dim or full]  # (N, d)
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        record = {"model_version": self.embedder.version, "dim": out.shape[1], "int8": int8}
        if int8:
            q = self.embedder.quant
            record.update(embeddings=quantize(out, q).tolist(), scale=q.scale, zero_point=q.zero_point)
        else:
            record["embeddings"] = out.astype(np.float32).tolist()
        return record

    def results(self, scores: np.ndarray, pin_ids: list[str]) -> dict[str, Any]:
        hits = [self.card(p) | {"score": round(float(s), 6)} for s, p in zip(scores, pin_ids)]
        return {"model_version": self.embedder.version, "results": hits}

    def card(self, pin_id: str) -> dict[str, Any]:
        meta = self.pins_meta.get(pin_id, {})
        image_url = f"/pins/{urllib.parse.quote(pin_id, safe='')}/image" if meta.get("image") is not None else None
        return {"pin_id": pin_id, "title": meta.get("title"), "image_url": image_url}

    def search_vector(self, vector: np.ndarray, k: int) -> dict[str, Any]:
        with self.lock:
            scores, pin_ids = self.index.search(vector[None, :], self.check_k(k))
        return self.results(scores[0], pin_ids[0])

    def neighbors(self, pin_id: str, k: int, exclude_self: bool) -> dict[str, Any]:
        self.check_k(k)
        with self.lock:
            if pin_id not in self.index:
                raise bad_input(f"pin {pin_id!r} is not in the index", 404)
            scores, pin_ids = self.index.search_by_id(pin_id, k, exclude_self=exclude_self)
        return {"query": self.card(pin_id)} | self.results(scores, pin_ids)

    def add_pin(self, pin_id: str | None, fields: dict[str, Any], image: Any, image_bytes: bytes | None) -> dict:
        pin_id = self.check_pin_id(pin_id) if pin_id is not None else f"fresh-{uuid.uuid4().hex[:12]}"
        text = pin_text(fields)
        if image is None and not text:
            raise bad_input("a pin needs an image or at least one non-empty text field (multipart/form-data: "
                            "an image file, and a texts JSON object or title, description, ... fields)")
        field = self.index.meta.field
        if field == "image" and image is None:
            raise bad_input("this index holds image embeddings: the pin needs an image")
        if field == "image":
            vector = self.embedder.embed_images([image])
        elif field == "text":
            vector = self.embedder.embed_texts([text])
        else:
            vector = self.embedder.embed_pins([{**fields, "image": image}])
        with self.lock:
            if pin_id in self.index:
                raise bad_input(f"pin {pin_id!r} is already in the index", 409)
            self.index.add_vectors(vector, [pin_id])
            self.pins_meta[pin_id] = {"title": fields.get("title"), "image": image_bytes}
            size = len(self.index)
        return {"pin_id": pin_id, "index_size": size, "model_version": self.embedder.version}

    def check_pin_id(self, pin_id: str) -> str:
        pin_id = pin_id.strip()
        if not pin_id or len(pin_id) > self.limits.max_pin_id_chars or not pin_id.isprintable():
            raise bad_input(f"pin_id must be 1-{self.limits.max_pin_id_chars} printable characters")
        return pin_id


def _list_value(name: str, value: Any) -> list[str] | None:
    """A list field from JSON (list of strings) or a form string (JSON list, or values split on '|')."""
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else [v.strip() for v in text.split("|")]
    if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
        raise bad_input(f"{name} must be a list of strings")
    return value


def pin_fields_from_form(texts: str | None, form: dict[str, str | None], limits: ServeLimits) -> dict[str, Any]:
    """Text fields of a new pin from a JSON object (`texts`) and/or one form field per text field."""
    fields: dict[str, Any] = {}
    if texts:
        try:
            fields = json.loads(texts)
        except ValueError as err:
            raise bad_input(f"texts is not valid JSON ({err})") from None
        if not isinstance(fields, dict) or set(fields) - set(TEXT_FIELDS):
            raise bad_input(f"texts must be a JSON object with keys among {', '.join(TEXT_FIELDS)}")
    fields.update({name: value for name, value in form.items() if value is not None})
    for name in STRING_FIELDS:
        if fields.get(name) is not None and not isinstance(fields[name], str):
            raise bad_input(f"{name} must be a string")
    try:
        fields.update({name: _list_value(name, fields.get(name)) for name in LIST_FIELDS})
    except ValueError as err:
        raise bad_input(f"a list field is not valid JSON ({err})") from None
    if len(pin_text(fields)) > limits.max_text_chars * len(TEXT_FIELDS):
        raise bad_input("the pin's texts are too long", 413)
    return {name: fields.get(name) for name in TEXT_FIELDS}


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one readable line per problem, e.g. 'body.texts: Field required'."""
    lines = [
        "request body is not valid JSON" if e.get("type") == "json_invalid"
        else f"{'.'.join(str(part) for part in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
        for e in exc.errors()
    ]
    return JSONResponse({"detail": "; ".join(lines) or "invalid request"}, status_code=422)


def token_checker(token: str | None) -> Any:
    """A dependency: 503 when no token is configured, 401 when the bearer token is missing or wrong."""

    def check(authorization: str | None = Header(default=None)) -> None:
        if not token:
            raise bad_input("adding pins is disabled: start the server with --token-file or PINCLIP_TOKEN", 503)
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})

    return check


def _embed_routes(app: FastAPI, svc: PinService) -> None:
    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model_version": svc.embedder.version, "index_size": len(svc.index),
                "index_kind": svc.index.meta.kind, "field": svc.index.meta.field, "dim": svc.index.meta.dim}

    @app.post("/embed/text")
    def embed_text(body: TextsRequest) -> dict:
        if not 1 <= len(body.texts) <= svc.limits.max_texts:
            raise bad_input(f"texts must hold 1 to {svc.limits.max_texts} strings, got {len(body.texts)}")
        texts = [svc.check_text(t, f"texts[{i}]") for i, t in enumerate(body.texts)]
        return svc.shape_vectors(svc.embedder.embed_texts(texts), body.dim, body.int8)

    @app.post("/embed/image")
    def embed_image(file: UploadFile = File(...), dim: int | None = Form(None), int8: bool = Form(False)) -> dict:
        return svc.shape_vectors(svc.embedder.embed_images([svc.read_image(file)]), dim, int8)


def _search_routes(app: FastAPI, svc: PinService) -> None:
    @app.get("/search/text")
    def search_text_get(q: str, k: int = 10) -> dict:
        return search_text(TextQuery(q=q, k=k))

    @app.post("/search/text")
    def search_text(body: TextQuery) -> dict:
        svc.check_k(body.k)
        # a typed search is embedded with the field tag of search queries
        vector = svc.embedder.embed_texts([svc.check_text(body.q, "q")], field="queries")[0]  # (D,)
        return {"query": body.q} | svc.search_vector(vector, body.k)

    @app.post("/search/image")
    def search_image(file: UploadFile = File(...), k: int = Form(10)) -> dict:
        svc.check_k(k)
        return svc.search_vector(svc.embedder.embed_images([svc.read_image(file)])[0], k)

    @app.get("/search/pin/{pin_id:path}")
    def search_pin(pin_id: str, k: int = 10) -> dict:
        return svc.neighbors(pin_id, k, exclude_self=False)

    @app.get("/related/{pin_id:path}")
    def related(pin_id: str, k: int = 10) -> dict:
        return svc.neighbors(pin_id, k, exclude_self=True)


def _pin_routes(app: FastAPI, svc: PinService, token: str | None) -> None:
    @app.post("/pins", status_code=201, dependencies=[Depends(token_checker(token))])
    def add_pin(
        image: UploadFile | None = File(None),
        texts: str | None = Form(None, description="JSON object: title, description, caption, queries, annotations"),
        pin_id: str | None = Form(None, description="optional; a fresh id is made when absent"),
        title: str | None = Form(None),
        description: str | None = Form(None),
        caption: str | None = Form(None),
        queries: str | None = Form(None, description="JSON list or values separated by '|'"),
        annotations: str | None = Form(None, description="JSON list or values separated by '|'"),
    ) -> dict:
        form = {"title": title, "description": description, "caption": caption, "queries": queries,
                "annotations": annotations}
        fields = pin_fields_from_form(texts, form, svc.limits)
        picture, data = svc.read_upload(image) if image is not None and image.filename else (None, None)
        return svc.add_pin(pin_id, fields, picture, data)

    @app.get("/pins/{pin_id:path}/image")
    def pin_image(pin_id: str) -> Response:
        image = svc.pins_meta.get(pin_id, {}).get("image")
        if image is None:
            raise bad_input(f"pin {pin_id!r} has no image here", 404)
        if isinstance(image, bytes):
            return Response(image, media_type=_sniff_image_type(image))
        if not Path(image).is_file():
            raise bad_input(f"the image file of pin {pin_id!r} is missing", 404)
        return FileResponse(image, media_type=mimetypes.guess_type(image)[0] or "application/octet-stream")

    @app.get("/pins/{pin_id:path}")
    def pin_info(pin_id: str) -> dict:
        if pin_id not in svc.pins_meta and pin_id not in svc.index:
            raise bad_input(f"unknown pin {pin_id!r}", 404)
        return svc.card(pin_id) | {"indexed": pin_id in svc.index}


def _sniff_image_type(data: bytes) -> str:
    signatures = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF8": "image/gif", b"RIFF": "image/webp"}
    return next((kind for sig, kind in signatures.items() if data.startswith(sig)), "application/octet-stream")


def create_app(embedder: Any, index: Any, pins_meta: dict[str, dict], token: str | None,
               limits: ServeLimits | None = None) -> FastAPI:
    """The service: pins_meta maps pin_id -> {"title", "image" (path or bytes)}; token guards POST /pins."""
    from pinclip import __version__

    limits = limits or ServeLimits()
    svc = PinService(embedder, index, pins_meta, limits)
    app = FastAPI(title="PinCLIP", version=__version__,
                  description="Multimodal pin embeddings: embed, search, related pins, cold-start adds.")
    app.state.service = svc
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    app.add_exception_handler(RequestValidationError, validation_error)
    _embed_routes(app, svc)
    _search_routes(app, svc)
    _pin_routes(app, svc, token)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
