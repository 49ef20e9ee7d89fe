"""PinCLIP's own HTTP routes: embed, search, related pins, add / replace / delete pins, pin cards and images.

Mounted by pinclip.serve.app.create_app (`pinclip serve`). Every limit is part of a parameter's
type (k's range, the Matryoshka dims, text lengths, list sizes), so the OpenAPI schema states it
and FastAPI enforces it with a 422.
"""

import hmac
import json
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Form, Path, Query, UploadFile
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, BeforeValidator, Field, StrictBool, StrictInt, StringConstraints, create_model

from pinclip.data.schema import LIST_FIELDS, STRING_FIELDS, TEXT_FIELDS
from pinclip.serve.app import errors
from pinclip.serve.embed import pin_text
from pinclip.serve.service import PinService, ServeLimits, ServiceError, unicode_problem

PIN_ID_PATTERN = r"^\S(?:[^\x00-\x1f\x7f]*\S)?$"  # no control characters, no surrounding space
bearer = HTTPBearer(auto_error=False, description="the token given to `pinclip serve` (--token-file or PINCLIP_TOKEN)")


def valid_unicode(value: Any) -> Any:
    problem = unicode_problem(value) if isinstance(value, str) else None
    if problem:
        raise ValueError(problem)
    return value


def text_type(limits: ServeLimits) -> Any:
    """A non-blank string of at most max_text_chars characters, valid Unicode."""
    return Annotated[str, BeforeValidator(valid_unicode),
                     StringConstraints(min_length=1, max_length=limits.max_text_chars, pattern=r"\S")]


def dim_type(svc: PinService) -> Any:
    return Literal[tuple(svc.allowed_dims())] | None  # the trained Matryoshka prefixes


def request_models(svc: PinService) -> tuple[type[BaseModel], type[BaseModel]]:
    """The JSON bodies of /embed/text and POST /search/text, with this server's limits."""
    text, limits = text_type(svc.limits), svc.limits
    texts_request = create_model("TextsRequest", texts=(list[text], Field(min_length=1, max_length=limits.max_texts)),
                                 dim=(dim_type(svc), None), int8=(StrictBool, False))
    text_query = create_model("TextQuery", q=(text, ...),
                              k=(StrictInt, Field(10, ge=1, le=limits.max_k)))  # JSON true is not a k
    return texts_request, text_query


class EmbedResponse(BaseModel):
    model_version: str
    dim: int
    int8: bool
    embeddings: list[list[float]]
    scale: float | None = None
    zero_point: float | None = None


def embed_routes(app: FastAPI, svc: PinService) -> None:
    texts_request, _ = request_models(svc)
    dim_t = dim_type(svc)

    @app.get("/health")
    def health() -> dict:
        meta = svc.backend.meta
        return {"status": "ok", "model_version": svc.embedder.version, "index_size": len(svc.backend),
                "index_kind": meta.kind, "field": meta.field, "dim": meta.dim, "backend": svc.backend.name}

    @app.post("/embed/text", response_model=EmbedResponse, responses=errors(400, 413, 422, 503))
    def embed_text(body: texts_request) -> dict:  # type: ignore[valid-type]
        return svc.shape_vectors(svc.embed("text", body.texts), body.dim, body.int8)

    @app.post("/embed/image", response_model=EmbedResponse, responses=errors(400, 413, 422, 503))
    def embed_image(file: UploadFile = File(...), dim: dim_t = Form(None), int8: bool = Form(False)) -> dict:  # type: ignore[valid-type]
        image = svc.decode(file.file.read(svc.limits.max_body_bytes + 1), file.filename or "file")
        return svc.shape_vectors(svc.embed("image", [image]), dim, int8)


class Hit(BaseModel):
    pin_id: str
    title: str | None
    image_url: str | None
    score: float | None


class Card(BaseModel):
    pin_id: str
    title: str | None
    image_url: str | None


class SearchResponse(BaseModel):
    model_version: str
    results: list[Hit]
    query: str | Card | None = None


def search_routes(app: FastAPI, svc: PinService) -> None:
    _, text_query = request_models(svc)
    k_query = Query(10, ge=1, le=svc.limits.max_k)
    found = {"response_model": SearchResponse}

    @app.get("/search/text", **found, responses=errors(400, 413, 422, 503))
    def search_text_get(q: Annotated[str, BeforeValidator(valid_unicode)] = Query(
            ..., min_length=1, max_length=svc.limits.max_text_chars, pattern=r"\S"), k: int = k_query) -> dict:
        return search_text(text_query(q=q, k=k))

    @app.post("/search/text", **found, responses=errors(400, 413, 422, 503))
    def search_text(body: text_query) -> dict:  # type: ignore[valid-type]
        vector = svc.embed("text", [body.q], field="queries")[0]  # (D,) typed searches carry the queries tag
        return {"query": body.q} | svc.search_vector(vector, body.k)

    @app.post("/search/image", **found, responses=errors(400, 413, 422, 503))
    def search_image(file: UploadFile = File(...), k: int = Form(10, ge=1, le=svc.limits.max_k)) -> dict:
        image = svc.decode(file.file.read(svc.limits.max_body_bytes + 1), file.filename or "file")
        return svc.search_vector(svc.embed("image", [image])[0], k)

    @app.get("/search/pin/{pin_id:path}", **found, responses=errors(404, 422))
    def search_pin(pin_id: str, k: int = k_query) -> dict:
        return svc.neighbors(pin_id, k, exclude_self=False)

    @app.get("/related/{pin_id:path}", **found, responses=errors(404, 422))
    def related(pin_id: str, k: int = k_query) -> dict:
        return svc.neighbors(pin_id, k, exclude_self=True)


def token_checker(token: str | None) -> Any:
    """A dependency: 503 when no token is configured, 401 when the bearer token is missing or wrong."""

    def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if not token:
            raise ServiceError(503, "adding and deleting pins is disabled: start the server with --token-file "
                                    "or PINCLIP_TOKEN")
        if credentials is None or not credentials.credentials:
            raise ServiceError(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.credentials.strip().encode(), token.encode()):
            raise ServiceError(401, "invalid bearer token", {"WWW-Authenticate": "Bearer"})

    return check


def _parse_json(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as err:
        raise ServiceError(422, f"{name} is not valid JSON ({err})") from None
    except RecursionError:
        raise ServiceError(422, f"{name} is nested too deeply") from None


def _list_value(name: str, value: Any) -> list[str] | None:
    """A list field from JSON (list of strings) or a form string (JSON list, or values split on '|')."""
    if isinstance(value, str):
        text = value.strip()
        value = _parse_json(name, text) if text.startswith("[") else [v.strip() for v in text.split("|")]
    if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
        raise ServiceError(422, f"{name} must be a list of strings")
    return value


def pin_fields_from_form(texts: str | None, form: dict[str, str | None], limits: ServeLimits) -> dict[str, Any]:
    """Text fields of a new pin from a JSON object (`texts`) and/or one form field per text field."""
    fields: dict[str, Any] = {}
    if texts:
        fields = _parse_json("texts", texts)
        if not isinstance(fields, dict) or set(fields) - set(TEXT_FIELDS):
            raise ServiceError(422, f"texts must be a JSON object with keys among {', '.join(TEXT_FIELDS)}")
    fields.update({name: value for name, value in form.items() if value is not None})
    for name in STRING_FIELDS:
        if fields.get(name) is not None and not isinstance(fields[name], str):
            raise ServiceError(422, f"{name} must be a string")
    fields.update({name: _list_value(name, fields.get(name)) for name in LIST_FIELDS})
    for name in TEXT_FIELDS:  # the one limit of every text, inside the texts object too
        values = fields.get(name) if name in LIST_FIELDS else [fields.get(name)]
        longest = max((len(v) for v in values or [] if v is not None), default=0)
        if longest > limits.max_text_chars:
            raise ServiceError(422, f"{name} holds a text of {longest:,} characters; the limit is "
                                    f"{limits.max_text_chars:,}")
    joined = pin_text(fields)
    if unicode_problem(joined):
        raise ServiceError(422, f"the pin's texts contain {unicode_problem(joined)}")
    if len(joined) > limits.max_text_chars * len(TEXT_FIELDS):
        raise ServiceError(422, f"the pin's texts are {len(joined)} characters; the limit is "
                                f"{limits.max_text_chars * len(TEXT_FIELDS)}")
    return {name: fields.get(name) for name in TEXT_FIELDS}


class PinWritten(BaseModel):
    pin_id: str
    replaced: bool
    index_size: int
    model_version: str


class PinDeleted(BaseModel):
    pin_id: str
    deleted: bool
    index_size: int


def pin_routes(app: FastAPI, svc: PinService, token: str | None) -> None:
    limits = svc.limits
    def text_form(description: str | None = None, max_length: int = limits.max_text_chars) -> Any:
        return Form(None, max_length=max_length, description=description)

    pin_id_form = Form(None, min_length=1, max_length=limits.max_pin_id_chars, pattern=PIN_ID_PATTERN,
                       description="optional; a fresh id is made when absent; an id already there is replaced; "
                                   "no '.' or '..' path segment (422: URL-normalizing clients could not reach it)")
    auth = [Depends(token_checker(token))]

    @app.post("/pins", status_code=201, dependencies=auth, response_model=PinWritten,
              responses=errors(400, 401, 409, 413, 422, 503, 507))
    def add_pin(
        image: UploadFile | None = File(None),
        texts: str | None = text_form("JSON object: title, description, caption, queries, annotations",
                                      limits.max_text_chars * len(TEXT_FIELDS) + 200),
        pin_id: str | None = pin_id_form,
        title: str | None = text_form(),
        description: str | None = text_form(),
        caption: str | None = text_form(),
        queries: str | None = text_form("JSON list or values separated by '|'"),
        annotations: str | None = text_form("JSON list or values separated by '|'"),
        model_version: str | None = Form(None, description="if given, the write is refused (409) unless the index "
                                                          "holds this model version"),
    ) -> dict:
        form = {"title": title, "description": description, "caption": caption, "queries": queries,
                "annotations": annotations}
        if pin_id is not None and {".", ".."} & set(pin_id.split("/")):
            raise ServiceError(422, "pin_id must not have a '.' or '..' path segment: clients that normalize "
                                    "URLs could not reach /pins/{pin_id}")
        fields = pin_fields_from_form(texts, form, limits)
        picture = None
        if image is not None and image.filename:
            picture = svc.decode(image.file.read(limits.max_body_bytes + 1), image.filename)
        return svc.put_pin(pin_id, fields, picture, model_version)

    @app.delete("/pins/{pin_id:path}", dependencies=auth, response_model=PinDeleted,
                responses=errors(401, 404, 503, 507))
    def delete_pin(pin_id: str) -> dict:
        return svc.delete_pin(pin_id)

    @app.get("/images/{pin_id:path}", response_class=Response, responses={
        200: {"content": {t: {"schema": {"type": "string", "format": "binary"}} for t in
                          ("image/png", "image/jpeg", "image/gif", "image/webp")}, "description": "the image"},
        **errors(404)})
    def pin_image(pin_id: Annotated[str, Path()]) -> Response:
        data, kind = svc.pin_image(pin_id)
        return Response(data, media_type=kind)

    @app.get("/pins/{pin_id:path}", response_model=Card, responses=errors(404))
    def pin_info(pin_id: str) -> dict:
        if pin_id not in svc.backend:
            raise ServiceError(404, f"unknown pin {pin_id!r}")
        return svc.card(pin_id)
