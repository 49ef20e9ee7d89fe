"""The OpenAPI schema tells the truth: schemathesis over every operation, every check on.

Each operation gets a bounded number of generated requests (positive and negative, plus the
coverage phase's boundary cases); every response must have a documented status, content type and
body shape, valid input must be accepted and invalid input refused with a 4xx, never a 5xx.
One allowance, stated here: for the operations that take an image upload (bytes that must decode
as an image), a pin form (an image or some text; `texts` holding a JSON object) or an
/v1/embeddings input whose meaning follows `modality`, OpenAPI cannot say which generated values
make sense, so schema-valid input may also be refused there (422, or 400 on /v1). One check of
our own runs beside schemathesis' own: no error body carries a file path or a Python repr.
"""

from __future__ import annotations

import re

import schemathesis
from schemathesis.config import SchemathesisConfig
from serve_fakes import FakeEmbedder

from pinclip.quant import quantize
from pinclip.serve.app import ServeLimits, create_app
from pinclip.serve.index import PinIndex

TOKEN = "schema-token"
EXAMPLES_PER_OPERATION = 12
CONTENT_CHECKED = "^/(pins|search/image|embed/image|v1/embeddings)$"
LEAK = re.compile(r"/tmp/|/work/|/home/|site-packages| at 0x[0-9a-f]+|functools|function-(?:after|before)|Traceback")


def make_app():
    fake = FakeEmbedder()
    titles = [f"pin number {i}" for i in range(40)]
    index = PinIndex.build(quantize(fake.embed_texts(titles), fake.quant), [f"p{i}" for i in range(40)], fake.quant,
                           fake.version)
    meta = {f"p{i}": {"title": t, "image": None} for i, t in enumerate(titles)}
    limits = ServeLimits(max_body_bytes=2_000_000, max_k=50, max_texts=8, max_text_chars=300)
    return create_app(fake, index, meta, TOKEN, limits)


CONFIG = SchemathesisConfig.from_dict({
    "seed": 7,
    "auth": {"openapi": {"HTTPBearer": {"bearer": TOKEN}}},
    "generation": {"max-examples": EXAMPLES_PER_OPERATION, "mode": "all"},
    "operations": [{"include-path-regex": CONTENT_CHECKED, "include-method": "POST",
                    "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "404",
                                                                                  "409", "422"]}}}],
})
schema = schemathesis.openapi.from_asgi("/openapi.json", make_app(), config=CONFIG)


@schemathesis.check
def no_leak_in_error_bodies(ctx, response, case):
    """An error body names the problem, never a server path or a Python object."""
    if response.status_code >= 400 and LEAK.search(response.text or ""):
        raise AssertionError(f"error body leaks internals: {response.text[:300]}")


@schema.parametrize()
def test_every_operation_answers_as_its_schema_says(case):
    case.call_and_validate(additional_checks=[no_leak_in_error_bodies])


def test_the_schema_states_limits_and_error_bodies():
    spec = schema.raw_schema
    search = spec["paths"]["/search/text"]["get"]
    k = next(p for p in search["parameters"] if p["name"] == "k")["schema"]
    assert (k["minimum"], k["maximum"]) == (1, 50)
    assert set(search["responses"]) >= {"200", "413", "422", "503"}
    error = spec["components"]["schemas"]["ErrorBody"]
    assert error["properties"]["detail"]["type"] == "string"
    assert search["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    pins = spec["paths"]["/pins"]["post"]
    assert set(pins["responses"]) >= {"201", "401", "409", "413", "422"} and pins["security"]
    assert set(spec["paths"]["/pins/{pin_id}"]["delete"]["responses"]) >= {"200", "401", "404"}
    texts = spec["components"]["schemas"]["TextsRequest"]["properties"]
    assert texts["texts"]["maxItems"] == 8 and texts["texts"]["items"]["maxLength"] == 300
    dims = texts["dim"]["anyOf"][0]
    assert sorted(dims["enum"]) == [8, 16, 32]
    v1 = spec["paths"]["/v1/embeddings"]["post"]["responses"]
    assert v1["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIErrorBody")
