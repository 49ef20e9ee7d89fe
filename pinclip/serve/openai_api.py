"""The OpenAI embeddings API over PinCLIP: POST /v1/embeddings, GET /v1/models and GET /v1/models/{id}.

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.embeddings.create(model="pinclip-…", input=["red apple", "a bike"], dimensions=128)

Beyond OpenAI's fields (`input` a string or a list, `model`, `dimensions`, `encoding_format`
float | base64), the request may say `modality`: "text" (default), "image" (each input a `data:`
URI of an image, the convention of the Infinity server), or "pin" (PinCLIP: each input an object
with `image` as a data URI and the text fields title, description, caption, queries, annotations).
`dimensions` must be one of the model's Matryoshka dims (400 otherwise); the prefix is
renormalized. `encoding_format: "int8"` (PinCLIP) returns the global-affine int8 codes, with the
scale and zero-point under `pinclip` in the response: x ≈ scale · (code − zero_point).
Every text (a text input, a pin's title, each query) has the one character limit of every route
(`max_text_chars`, 2,000 by default); only image data: URIs may be longer, up to the body limit.
Token counts in `usage` come from a private copy of the model's tokenizer, never the one the
embedding batches use. Errors come in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

import base64
import binascii
import copy
import re
import threading
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, Field, StringConstraints

from pinclip.serve.routes import valid_unicode
from pinclip.serve.service import PinService, ServiceError

DATA_URI = re.compile(r"^data:(image/[\w.+-]+)?(;[\w=.+-]+)*;base64,", re.IGNORECASE)
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               413: "invalid_request_error", 422: "invalid_request_error", 503: "server_error"}


def openai_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    status = 400 if status == 422 else status
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": None,
                      "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    error: OpenAIErrorDetail


def v1_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "invalid request: input, model modality, dimensions or encoding", 404: "unknown model",
            413: "request body over the size limit", 503: "the embedding queue is full; retry"}
    return {code: {"model": OpenAIErrorBody, "description": text[code]} for code in codes}


def request_model(svc: PinService) -> type[BaseModel]:
    limits = svc.limits
    text = Annotated[str, BeforeValidator(valid_unicode),
                     StringConstraints(min_length=1, max_length=limits.max_text_chars, pattern=r"\S")]
    text_or_uri = Annotated[str, BeforeValidator(valid_unicode), StringConstraints(
        min_length=1, max_length=limits.max_body_bytes, pattern=r"\S")]

    class PinInput(BaseModel):
        image: text_or_uri | None = Field(None, description="a data: URI of the pin's image")
        title: text | None = None
        description: text | None = None
        caption: text | None = None
        queries: list[text] | None = Field(None, max_length=limits.max_texts)
        annotations: list[text] | None = Field(None, max_length=limits.max_texts)

    class EmbeddingsRequest(BaseModel):
        input: text_or_uri | list[text_or_uri] | list[PinInput] = Field(
            ..., description=f"strings (texts of at most {limits.max_text_chars} characters, or image data: URIs) "
                             "or, with modality pin, pin objects")
        model: str = Field(..., max_length=200)
        dimensions: Literal[tuple(svc.allowed_dims())] | None = None  # type: ignore[valid-type]
        encoding_format: Literal["float", "base64", "int8"] = "float"
        modality: Literal["text", "image", "pin"] = "text"
        user: str | None = Field(None, max_length=limits.max_text_chars)

    return EmbeddingsRequest


def decode_data_uri(svc: PinService, uri: str, where: str) -> Any:
    match = DATA_URI.match(uri)
    if not match:
        raise ServiceError(400, f"{where}: images must be data: URIs (data:image/png;base64,...)")
    try:
        data = base64.b64decode(uri[match.end():], validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError(400, f"{where}: the data: URI is not valid base64") from None
    return svc.decode(data, where)


def embed_inputs(svc: PinService, body: Any) -> np.ndarray:
    """Float embeddings (N, D) of the request's inputs, in order."""
    items = [body.input] if isinstance(body.input, (str, BaseModel)) else list(body.input)
    if not 1 <= len(items) <= svc.limits.max_texts:
        raise ServiceError(400, f"input must hold 1 to {svc.limits.max_texts} items, got {len(items)}")
    pins = [i for i in items if isinstance(i, BaseModel)]
    if (body.modality == "pin") != (len(pins) == len(items)):
        raise ServiceError(400, "with modality 'pin' every input is a pin object, otherwise a string")
    if body.modality == "text":
        for i, item in enumerate(items):
            if len(item) > svc.limits.max_text_chars:
                raise ServiceError(400, f"input[{i}] is {len(item):,} characters; the limit for a text is "
                                        f"{svc.limits.max_text_chars:,} (as on every route)")
        return svc.embed("text", items)
    if body.modality == "image":
        return svc.embed("image", [decode_data_uri(svc, uri, f"input[{i}]") for i, uri in enumerate(items)])
    dicts = []
    for i, pin in enumerate(pins):
        fields = pin.model_dump(exclude={"image"})
        image = decode_data_uri(svc, pin.image, f"input[{i}].image") if pin.image else None
        if image is None and not any(fields.values()):
            raise ServiceError(400, f"input[{i}]: a pin needs an image or some text")
        dicts.append({**fields, "image": image})
    return svc.embed("pin", dicts)


class TokenCounter:
    """Prompt tokens of texts, counted with a private copy of the model's tokenizer under its own lock.

    A fast tokenizer's truncation and padding settings are state that each call may change; the
    embedding batches rely on theirs, so request threads never call the model's tokenizer.
    """

    def __init__(self, embedder: Any) -> None:
        backbone = getattr(getattr(embedder, "model", None), "backbone", None)
        shared = getattr(backbone, "tokenizer", None)
        self.tokenizer = copy.deepcopy(shared) if shared is not None else None
        self.lock = threading.Lock()

    def __call__(self, texts: list[str]) -> int:
        if self.tokenizer is None or not texts:
            return 0
        with self.lock:
            return sum(len(ids) for ids in self.tokenizer(texts, truncation=False)["input_ids"])


def openai_routes(app: FastAPI, svc: PinService) -> None:
    embeddings_request = request_model(svc)
    model_id = str(svc.embedder.version)
    count_tokens = TokenCounter(svc.embedder)
    model_card = {"id": model_id, "object": "model", "created": 0, "owned_by": "pinclip",
                  "pinclip": {"dims": svc.allowed_dims(), "modalities": ["text", "image", "pin"]}}

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model}", responses=v1_errors(404))
    def model(model: str) -> dict:
        if model not in (model_id, "pinclip"):
            raise ServiceError(404, f"model {model!r} is not served here; GET /v1/models lists {model_id!r}")
        return model_card

    @app.post("/v1/embeddings", responses=v1_errors(400, 404, 413, 503))
    def embeddings(body: embeddings_request) -> dict:  # type: ignore[valid-type]
        if body.model not in (model_id, "pinclip"):
            raise ServiceError(404, f"model {body.model!r} is not served here; GET /v1/models lists {model_id!r}")
        shaped = svc.shape_vectors(embed_inputs(svc, body), body.dimensions, body.encoding_format == "int8")
        rows = shaped["embeddings"]
        if body.encoding_format == "base64":
            rows = [base64.b64encode(np.asarray(r, dtype="<f4").tobytes()).decode() for r in rows]
        texts = [body.input] if isinstance(body.input, str) else body.input
        tokens = count_tokens(texts) if body.modality == "text" else 0
        extension = {"model_version": shaped["model_version"], "dim": shaped["dim"]}
        if body.encoding_format == "int8":
            extension |= {"scale": shaped["scale"], "zero_point": shaped["zero_point"]}
        return {"object": "list", "model": model_id, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "data": [{"object": "embedding", "index": i, "embedding": r} for i, r in enumerate(rows)],
                "pinclip": extension}
