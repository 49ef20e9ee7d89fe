"""The OpenAI embeddings API over PinCLIP: POST /v1/embeddings and GET /v1/models.

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
Errors come in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

import base64
import binascii
import re
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
    text = Annotated[str, BeforeValidator(valid_unicode), StringConstraints(min_length=1, max_length=limits.max_body_bytes)]

    class PinInput(BaseModel):
        image: text | None = Field(None, description="a data: URI of the pin's image")
        title: text | None = None
        description: text | None = None
        caption: text | None = None
        queries: list[text] | None = None
        annotations: list[text] | None = None

    class EmbeddingsRequest(BaseModel):
        input: text | list[text] | list[PinInput] = Field(..., description="strings (texts or image data: URIs) "
                                                                           "or, with modality pin, pin objects")
        model: str
        dimensions: Literal[tuple(svc.allowed_dims())] | None = None  # type: ignore[valid-type]
        encoding_format: Literal["float", "base64", "int8"] = "float"
        modality: Literal["text", "image", "pin"] = "text"
        user: str | None = None

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


def count_tokens(svc: PinService, texts: list[str]) -> int:
    tokenizer = getattr(getattr(getattr(svc.embedder, "model", None), "backbone", None), "tokenizer", None)
    return sum(len(ids) for ids in tokenizer(texts)["input_ids"]) if tokenizer and texts else 0


def openai_routes(app: FastAPI, svc: PinService) -> None:
    embeddings_request = request_model(svc)
    model_id = str(svc.embedder.version)

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "pinclip",
                                            "pinclip": {"dims": svc.allowed_dims(),
                                                        "modalities": ["text", "image", "pin"]}}]}

    @app.post("/v1/embeddings", responses=v1_errors(400, 404, 413, 503))
    def embeddings(body: embeddings_request) -> dict:  # type: ignore[valid-type]
        if body.model not in (model_id, "pinclip"):
            raise ServiceError(404, f"model {body.model!r} is not served here; GET /v1/models lists {model_id!r}")
        shaped = svc.shape_vectors(embed_inputs(svc, body), body.dimensions, body.encoding_format == "int8")
        rows = shaped["embeddings"]
        if body.encoding_format == "base64":
            rows = [base64.b64encode(np.asarray(r, dtype="<f4").tobytes()).decode() for r in rows]
        texts = [body.input] if isinstance(body.input, str) else body.input
        tokens = count_tokens(svc, texts) if body.modality == "text" else 0
        extension = {"model_version": shaped["model_version"], "dim": shaped["dim"]}
        if body.encoding_format == "int8":
            extension |= {"scale": shaped["scale"], "zero_point": shaped["zero_point"]}
        return {"object": "list", "model": model_id, "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "data": [{"object": "embedding", "index": i, "embedding": r} for i, r in enumerate(rows)],
                "pinclip": extension}
