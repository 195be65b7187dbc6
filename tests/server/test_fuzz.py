"""Property-based fuzzing of the OpenAPI schema with schemathesis (tiny model, real server):
no 5xx, and every response conforms to the schema, over at least 500 generated cases whose
strings may hold any code point (lone surrogates and control characters included)."""

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.app import build_app
from server.config import ServerConfig
from tests.support.live import LiveServer

# Lone UTF-16 surrogates (JSON spells them "\udc00") and control characters
HOSTILE = ["\udc00", "\ud800", "\udfff", "\x00", "\x1b", "\x7f", "\u202e"]
CASES_PER_OPERATION = 260  # two POST operations: > 500 cases in all
# Not schemathesis' "positive data accepted": a schema-valid body may still be refused
# with a 400 for what the schema cannot say (prompt plus max_tokens over the context).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def live(tiny_loaded):
    config = ServerConfig(model="unused", device="cpu", max_batch_size=16, max_model_len=32)
    with LiveServer(build_app(config, loaded=tiny_loaded)) as server:
        yield server


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_no_server_errors_and_responses_match_the_schema(live, path):
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
    # Any code point but lone surrogates (schemathesis leaves those out), NUL included;
    # `hostile` below puts surrogates and controls into a string of the body as well.
    schema.config.generation.update(codec=None, allow_x00=True)
    operation = schema[path]["POST"]
    seen, odd = [], set()

    @given(
        case=operation.as_strategy(),
        hostile=st.sampled_from([None, *HOSTILE]),
        where=st.integers(0, 63),
    )
    @settings(
        max_examples=CASES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case, hostile, where):
        if hostile is None:
            response = case.call(base_url=live.url, timeout=60)
            seen.append(response.status_code)
            assert response.status_code < 500, (case.body, response.text[:300])
            case.validate_response(response, checks=CHECKS)
            return
        # schemathesis cannot send a lone surrogate itself (its own checks encode UTF-8):
        # the same body goes out as JSON with \u escapes, as any JSON client writes it.
        body = _with_character(case.body, hostile, where)
        odd.update(_odd_characters(body))
        r = httpx.post(
            live.url + path,
            content=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
            timeout=60,
        )
        seen.append(r.status_code)
        assert r.status_code < 500, (body, r.text[:300])
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
            return
        out = r.json()
        assert ("choices" in out) if r.status_code == 200 else out["error"]["code"] == r.status_code

    check()
    assert len(seen) >= CASES_PER_OPERATION  # hypothesis really ran them
    assert 200 in seen and any(400 <= s < 500 for s in seen)
    assert odd == {"surrogate", "control"}, odd  # the alphabet really reached the server


def _with_character(body, char: str, where: int):
    """`body` with `char` put into its (where mod n)-th string value."""
    count = [0]

    def walk(value, target):
        if isinstance(value, str):
            count[0] += 1
            if count[0] - 1 == target:
                cut = where % (len(value) + 1)
                return value[:cut] + char + value[cut:]
            return value
        if isinstance(value, dict):
            return {k: walk(v, target) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, target) for v in value]
        return value

    walk(body, -1)  # count the strings
    if count[0] == 0:
        return body
    target, count[0] = where % count[0], 0
    return walk(body, target)


def _odd_characters(value) -> set[str]:
    """Which kinds of hostile character a request body holds somewhere in its strings."""
    if isinstance(value, str):
        kinds = set()
        if any("\ud800" <= c <= "\udfff" for c in value):
            kinds.add("surrogate")
        if any(ord(c) < 32 for c in value):
            kinds.add("control")
        return kinds
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list):
        return set().union(*(_odd_characters(v) for v in value))
    return set()
