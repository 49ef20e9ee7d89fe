"""What the HTTP endpoints do, without HTTP: embed (micro-batched), search, put and delete pins, serve images.

Used by pinclip.serve.app (`pinclip serve`). Errors are ServiceError(status, message), which the
app turns into {"detail": message} responses.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException

from pinclip.data.images import ImageError, open_image, shrink_to_png
from pinclip.quant import quantize
from pinclip.serve.backend import IndexBackend, VersionConflict
from pinclip.serve.batcher import MicroBatcher, QueueFull
from pinclip.serve.embed import pin_text
from pinclip.serve.index import PinIndexError

IMAGE_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF87a": "image/gif",
                    b"GIF89a": "image/gif"}
_LIBC: Any = None  # ctypes handle of glibc, False where there is none
CARD_IMAGE_SIDE = 512  # images of pins added over HTTP are kept as PNGs at most this large


@dataclass
class ServeLimits:
    max_body_bytes: int = 10 * 1024 * 1024  # whole request, uploads included
    max_k: int = 100
    max_texts: int = 32  # texts per /embed/text request (inputs per /v1/embeddings request)
    max_text_chars: int = 2000
    max_image_pixels: int = 20_000_000
    max_pin_id_chars: int = 200
    max_decodes: int = 2  # images decoded at once; more uploads wait their turn
    decode_side: int = 512  # large images are decoded down to about this longer side
    batch_size: int = 32  # items per model call across concurrent requests (1: no batching)
    image_batch_size: int = 8  # images per model call: the tower's activations grow with the batch
    batch_wait_ms: float = 5.0  # how long the first item of a batch waits for company
    max_queue: int = 256  # items waiting for the model; beyond it requests get 503


class ServiceError(HTTPException):
    """An answer with an error status; an HTTPException, so FastAPI passes it through body parsing."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, message, headers)
        self.status, self.message = status, message


def image_type(data: bytes) -> str | None:
    """The media type of PNG, JPEG, GIF or WebP bytes, else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for sig, kind in IMAGE_SIGNATURES.items() if data.startswith(sig)), None)


def release_freed_memory() -> None:
    """Hand memory freed by a large decode back to the OS (glibc keeps it in per-thread arenas otherwise)."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim(0)
        except (OSError, AttributeError):
            _LIBC = False
        return
    if _LIBC:
        _LIBC.malloc_trim(0)


def unicode_problem(text: str) -> str | None:
    """Why a string cannot be UTF-8 (a lone surrogate from a JSON escape), else None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"invalid Unicode at character {err.start} (a lone surrogate such as \\ud800)"
    return None


class PinService:
    """Embedder + index backend + pin metadata, shared by every request."""

    def __init__(self, embedder: Any, backend: IndexBackend, pins_meta: dict[str, dict], limits: ServeLimits,
                 image_roots: list[str] | None = None) -> None:
        self.embedder, self.backend, self.pins_meta, self.limits = embedder, backend, pins_meta, limits
        self.image_roots = [os.path.realpath(r) for r in image_roots or []]
        self.decodes = threading.BoundedSemaphore(limits.max_decodes)
        self.batchers: dict[tuple[str, str], MicroBatcher] = {}
        self.batchers_lock = threading.Lock()
        self.on_batch: Callable[[str, int], None] | None = None  # (kind, items in one model call), for /metrics

    # ---- embedding, through one micro-batcher per (kind, field) ---------------------------------

    def _batcher(self, kind: str, field: str) -> MicroBatcher:
        with self.batchers_lock:
            if (kind, field) not in self.batchers:
                embedder = self.embedder  # only the method of this kind is looked up (a text-only embedder serves text)
                fn: Callable[[list], Any] = {
                    "text": lambda texts: embedder.embed_texts(texts, field=field),
                    "image": lambda images: embedder.embed_images(images),
                    "pin": lambda pins: embedder.embed_pins(pins),
                }[kind]
                size = self.limits.batch_size if kind == "text" else min(self.limits.batch_size,
                                                                          self.limits.image_batch_size)
                observe = self.on_batch
                self.batchers[(kind, field)] = MicroBatcher(
                    fn, size, self.limits.batch_wait_ms, self.limits.max_queue, f"embed-{kind}-{field}",
                    (lambda n: observe(kind, n)) if observe else None)
            return self.batchers[(kind, field)]

    def embed(self, kind: str, items: list[Any], field: str = "title") -> np.ndarray:
        """Embeddings (N, D) of texts, images or pin dicts, batched with other requests' items."""
        batcher = self._batcher(kind, field)
        try:
            return np.stack(batcher.submit_all(items))  # (N, D)
        except QueueFull as err:
            raise ServiceError(503, f"server busy ({err}); retry shortly", {"Retry-After": "1"}) from None

    def shape_vectors(self, vectors: np.ndarray, dim: int | None, int8: bool) -> dict[str, Any]:
        """Matryoshka prefix (renormalized) and optional int8 codes of embeddings (N, D)."""
        out = vectors[:, : dim or self.embedder.dim]  # (N, d)
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        record = {"model_version": self.embedder.version, "dim": out.shape[1], "int8": int8}
        if int8:
            q = self.embedder.quant
            record.update(embeddings=quantize(out, q).tolist(), scale=q.scale, zero_point=q.zero_point)
        else:
            record["embeddings"] = out.astype(np.float32).tolist()
        return record

    def allowed_dims(self) -> list[int]:
        return list(getattr(self.embedder, "dims", None) or [self.embedder.dim])

    # ---- images --------------------------------------------------------------------------------

    def decode(self, data: bytes, name: str) -> Any:
        """Uploaded bytes as an RGB image, decoded at a reduced size, at most max_decodes at a time."""
        if not data:
            raise ServiceError(422, f"uploaded file {name!r} is empty")
        with self.decodes:
            try:
                return open_image(data, self.limits.max_image_pixels, self.limits.decode_side)
            except ImageError as err:
                status = 413 if err.reason.startswith("image too large") else 422
                raise ServiceError(status, f"uploaded file {name!r}: {err.reason}") from None
            finally:
                if len(data) > 32_768 or self.limits.max_decodes == 1:
                    release_freed_memory()

    def pin_image(self, pin_id: str) -> tuple[bytes, str]:
        """The image bytes and media type of a pin; only image files under the allowed folders."""
        card = self.backend.card(pin_id) or {}
        image = card.get("image") or (self.pins_meta.get(pin_id, {}).get("image") if pin_id in self.backend else None)
        if isinstance(image, str):
            real = os.path.realpath(image)
            if not any(os.path.commonpath([real, root]) == root for root in self.image_roots):
                raise ServiceError(404, f"the image of pin {pin_id!r} is outside the folders this server serves")
            try:
                with open(real, "rb") as f:
                    image = f.read(self.limits.max_body_bytes + 1)
            except OSError:
                raise ServiceError(404, f"the image file of pin {pin_id!r} is missing") from None
        kind = image_type(image) if image else None
        if kind is None:
            raise ServiceError(404, f"pin {pin_id!r} has no image here")
        return image, kind

    # ---- search --------------------------------------------------------------------------------

    def card(self, pin_id: str) -> dict[str, Any]:
        meta = self.backend.card(pin_id) or self.pins_meta.get(pin_id, {})
        image_url = f"/images/{urllib.parse.quote(pin_id, safe='')}" if meta.get("image") is not None else None
        return {"pin_id": pin_id, "title": meta.get("title"), "image_url": image_url}

    def results(self, scores: np.ndarray, pin_ids: list[str]) -> dict[str, Any]:
        hits = [self.card(p) | {"score": round(float(s), 6)} for s, p in zip(scores, pin_ids)]
        return {"model_version": self.embedder.version, "results": hits}

    def search_vector(self, vector: np.ndarray, k: int) -> dict[str, Any]:
        scores, pin_ids = self.backend.search(vector[None, :], k)
        return self.results(scores[0], pin_ids[0])

    def neighbors(self, pin_id: str, k: int, exclude_self: bool) -> dict[str, Any]:
        try:
            scores, pin_ids = self.backend.search_by_id(pin_id, k, exclude_self=exclude_self)
        except KeyError:
            raise ServiceError(404, f"pin {pin_id!r} is not in the index") from None
        return {"query": self.card(pin_id)} | self.results(scores, pin_ids)

    # ---- writes --------------------------------------------------------------------------------

    def put_pin(self, pin_id: str | None, fields: dict[str, Any], image: Any, model_version: str | None) -> dict:
        """Embed and add (or replace) a pin; durable when this returns."""
        if model_version is not None and model_version != self.backend.meta.model_version:
            raise ServiceError(409, f"the index holds embeddings of model {self.backend.meta.model_version}, "
                                    f"not {model_version}")
        pin_id = pin_id.strip() if pin_id is not None else f"fresh-{uuid.uuid4().hex[:12]}"
        text = pin_text(fields)
        if image is None and not text:
            raise ServiceError(422, "a pin needs an image or at least one non-empty text field (multipart/form-data: "
                                    "an image file, and a texts JSON object or title, description, ... fields)")
        field = self.backend.meta.field
        if field == "image" and image is None:
            raise ServiceError(422, "this index holds image embeddings: the pin needs an image")
        item, kind = {"image": (image, "image"), "text": (text, "text")}.get(field, ({**fields, "image": image}, "pin"))
        vector = self.embed(kind, [item])  # (1, D)
        codes = quantize(vector, self.embedder.quant)
        card = {"title": fields.get("title"), "image": shrink_to_png(image, CARD_IMAGE_SIDE) if image else None}
        replaced = pin_id in self.backend
        try:
            self.backend.put([pin_id], codes, [card], str(self.embedder.version))
        except VersionConflict as err:
            raise ServiceError(409, str(err)) from None
        except (PinIndexError, OSError) as err:
            raise write_failed("written", err) from None
        return {"pin_id": pin_id, "replaced": replaced, "index_size": len(self.backend),
                "model_version": self.embedder.version}

    def delete_pin(self, pin_id: str) -> dict:
        try:
            removed = self.backend.delete([pin_id])
        except (PinIndexError, OSError) as err:
            raise write_failed("deleted", err) from None
        if not removed:
            raise ServiceError(404, f"pin {pin_id!r} is not in the index")
        return {"pin_id": pin_id, "deleted": True, "index_size": len(self.backend)}


def write_failed(done: str, err: Exception) -> ServiceError:
    """507 when the index's disk is full, else 503; both retryable, neither naming a file."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return ServiceError(507, f"the pin could not be {done}: the index's disk is full; nothing was changed, "
                                 "retry once space is free", {"Retry-After": "10"})
    why = os.strerror(err.errno) if isinstance(err, OSError) and err.errno else "the index refused the write"
    return ServiceError(503, f"the pin could not be {done} ({why}); nothing was changed, retry",
                        {"Retry-After": "1"})


def image_roots_of(pins_path: str | Path | None, extra: list[str] | None = None) -> list[str]:
    """Folders whose image files may be served: the pins table's folder and any given."""
    roots = [str(Path(pins_path).resolve().parent)] if pins_path else []
    return roots + [str(Path(r).resolve()) for r in extra or []]
