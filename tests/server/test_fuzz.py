"""Property-based fuzzing of the OpenAPI schema with schemathesis (tiny model, real server):
no 5xx, and every response conforms to the schema, over at least 500 generated cases."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.app import build_app
from server.config import ServerConfig
from server.tools.live import LiveServer

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
    operation = schema[path]["POST"]
    seen = []

    @given(case=operation.as_strategy())
    @settings(
        max_examples=CASES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case):
        response = case.call(base_url=live.url, timeout=60)
        seen.append(response.status_code)
        assert response.status_code < 500, (case.body, response.text[:300])
        case.validate_response(response, checks=CHECKS)

    check()
    assert len(seen) >= CASES_PER_OPERATION  # hypothesis really ran them
    assert 200 in seen and any(400 <= s < 500 for s in seen)
