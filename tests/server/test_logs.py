"""Structured logs: JSON lines whose request id matches the response and its error body."""

import io
import json
import logging

import httpx
import pytest

from server.app import build_app
from server.config import ServerConfig
from server.logs import JSONFormatter
from tests.support.live import LiveServer


@pytest.fixture
def captured():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_log_lines_and_errors_carry_the_request_id(tiny_loaded, captured):
    config = ServerConfig(model="unused", device="cpu")
    with LiveServer(build_app(config, loaded=tiny_loaded)) as live:
        ok = httpx.post(
            live.url + "/v1/completions",
            json={"prompt": "hi", "max_tokens": 3},
            headers={"x-request-id": "trace-me-42"},
        )
        bad = httpx.post(live.url + "/v1/completions", json={"prompt": "hi", "max_tokens": -1})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "trace-me-42"
    assert bad.status_code == 400
    rid = bad.headers["x-request-id"]
    assert bad.json()["error"]["request_id"] == rid  # the error body names it too
    lines = captured()
    access = [x for x in lines if x["logger"] == "latentserve.access"]
    assert {"request_id": "trace-me-42", "status": 200, "path": "/v1/completions"}.items() <= next(
        x for x in access if x.get("request_id") == "trace-me-42"
    ).items()
    assert any(x.get("request_id") == rid and x["status"] == 400 for x in access)
    finished = [x for x in lines if x["message"] == "request finished"]
    mine = next(x for x in finished if x["request_id"] == "trace-me-42")
    assert mine["completion_tokens"] <= 3 and mine["method"] == "none"
    assert all(isinstance(x["ts"], str) and x["level"] == "info" for x in access)


def test_formatter_keeps_extra_fields_and_exceptions():
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom %s", ("now",), None)
    record.step = 3
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    out = json.loads(JSONFormatter().format(record))
    assert out["message"] == "boom now" and out["step"] == 3 and "ValueError" in out["exc"]
