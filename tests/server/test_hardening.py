"""The hardening classes of issue 14, each on both POST routes (tiny model, real uvicorn run
as `latentserve serve` runs it): unencodable text, body limits whatever the headers say,
slow clients, amplification, prompts too long to tokenize, trailing slashes, rewards that
break the float32 update, and webhooks that must not outlive their deadline or request.
Each test fails on the code before the fix it checks."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from server.app import build_app
from server.config import ServerConfig
from tests.support.live import LiveServer

C, CHAT = "/v1/completions", "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi"}]
LIMIT = 64 * 1024


def _config(grader, **overrides) -> ServerConfig:
    settings = {
        "model": "unused",
        "device": "cpu",
        "max_batch_size": 4,
        "max_model_len": 256,
        "max_request_bytes": LIMIT,
        "body_timeout_s": 1.0,
        "header_timeout_s": 1.0,
        "max_sequences_per_request": 8,
        "reward_url_allowlist": [grader.url + p for p in ("/reward", "/huge", "/trickle")],
        "reward_timeout_s": 2.0,
        **overrides,
    }
    return ServerConfig(**settings)


@pytest.fixture(scope="module")
def live(tiny_loaded, grader):
    config = _config(grader)
    with LiveServer(build_app(config, loaded=tiny_loaded), config) as server:
        yield server


def _assert_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["code"] == status
    if param is not None:
        assert err["param"] == param, err
    return err


def _alive(url: str) -> None:
    r = httpx.post(url + C, json={"prompt": "hi", "max_tokens": 2}, timeout=30)
    assert r.status_code == 200, r.text


# ---- 1. unencodable text ----------------------------------------------------------------
LS = {"method": "latentseek", "reward": {"type": "reference", "reference_answer": "7"}}
S = "\\udc00"  # as JSON spells it: a lone surrogate after parsing
SURROGATE_CASES = [
    (C, f'{{"prompt": "a{S}b"}}', "prompt"),
    (C, f'{{"prompt": ["ok", "{S}"]}}', "prompt.1"),
    (C, f'{{"prompt": "hi", "model": "{S}"}}', "model"),
    (C, f'{{"prompt": "hi", "stop": "{S}"}}', "stop"),
    (C, f'{{"prompt": "hi", "stop": ["x", "{S}"]}}', "stop.1"),
    (C, f'{{"prompt": "hi", "user": "{S}"}}', "user"),
    (
        C,
        f'{{"prompt": "hi", "latent": {{"method": "latentseek", "reward": '
        f'{{"type": "reference", "reference_answer": "{S}"}}}}}}',
        "latent.reward.reference_answer",
    ),
    (
        C,
        f'{{"prompt": "hi", "latent": {{"method": "latentseek", "reward": '
        f'{{"type": "regex", "pattern": "{S}"}}}}}}',
        "latent.reward.pattern",
    ),
    (
        C,
        f'{{"prompt": "hi", "latent": {{"method": "latentseek", "reward": '
        f'{{"type": "webhook", "url": "http://h/{S}"}}}}}}',
        "latent.reward.url",
    ),
    (C, f'{{"prompt": "hi", "latent": {{"method": "slr", "adapter": "{S}"}}}}', "latent.adapter"),
    (CHAT, f'{{"messages": [{{"role": "user", "content": "{S}"}}]}}', "messages.0.content"),
    (
        CHAT,
        f'{{"messages": [{{"role": "user", "content": [{{"type": "text", "text": "{S}"}}]}}]}}',
        "messages.0.content.0.text",
    ),
    (CHAT, f'{{"messages": [{{"role": "user", "content": "hi"}}], "model": "{S}"}}', "model"),
    (CHAT, f'{{"messages": [{{"role": "user", "content": "hi"}}], "stop": "{S}"}}', "stop"),
    (CHAT, f'{{"messages": [{{"role": "user", "content": "hi"}}], "user": "{S}"}}', "user"),
]


@pytest.mark.parametrize("route,raw,param", SURROGATE_CASES)
def test_lone_surrogates_are_a_400_naming_the_field(live, route, raw, param):
    r = httpx.post(
        live.url + route, content=raw.encode(), headers={"content-type": "application/json"}
    )
    err = _assert_error(r, 400, param)
    assert "surrogate" in err["message"] or "unicode" in err["message"]


def test_valid_surrogate_pairs_and_unicode_are_served(live):
    for route, body in [
        (C, '{"prompt": "smile \\ud83d\\ude00 \\u00e9", "max_tokens": 2}'),
        (CHAT, '{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}], "max_tokens": 2}'),
    ]:
        r = httpx.post(
            live.url + route, content=body.encode(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 200, r.text


# ---- 2. the body limit, whatever the headers say -------------------------------------------
def _raw_request(url: str, head: bytes, chunks, read_timeout: float = 15) -> bytes:
    """Send `head` then each chunk (stopping early once the server has answered); return
    what the server sent back until it closed or went quiet."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as sock:
        sock.sendall(head)
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except OSError:
                break  # the server answered and closed: read what it said
        out = b""
        try:
            while not out.endswith(b"}") and (data := sock.recv(65536)):
                out += data
        except OSError:
            pass
        return out


def _chunked(total: int, piece: int = 16 * 1024):
    body = json.dumps({"prompt": "x" * total}).encode()
    for i in range(0, len(body), piece):
        part = body[i : i + piece]
        yield f"{len(part):x}\r\n".encode() + part + b"\r\n"
    yield b"0\r\n\r\n"


@pytest.mark.parametrize("route", [C, CHAT])
@pytest.mark.parametrize("length_header", [None, "20"])
def test_chunked_body_over_the_limit_is_413(live, route, length_header):
    head = f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n"
    if length_header is not None:  # a small bogus length beside the chunked encoding
        head += f"Content-Length: {length_header}\r\n"
    reply = _raw_request(live.url, (head + "\r\n").encode(), _chunked(6 << 20))
    status = reply.split(b"\r\n", 1)[0]
    # h11 itself may refuse the contradictory headers (400); never accepted
    assert b" 413 " in status or (length_header and b" 400 " in status), reply[:300]
    _alive(live.url)


def test_chunked_body_under_the_limit_is_served(live):
    def gen():
        yield b'{"prompt": '
        yield b'"hi", "max_tokens": 2}'

    r = httpx.post(live.url + C, content=gen(), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    r = httpx.post(
        live.url + CHAT,
        content=iter([json.dumps({"messages": MSG, "max_tokens": 2}).encode()]),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200, r.text


# ---- slow clients --------------------------------------------------------------------------
@pytest.mark.parametrize("route", [C, CHAT])
def test_a_body_that_never_finishes_gets_408(live, route):
    head = (
        f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\n\r\n"
    ).encode()
    start = time.monotonic()
    reply = _raw_request(live.url, head, [b'{"prompt": '])
    assert b" 408 " in reply.split(b"\r\n", 1)[0], reply[:300]
    assert time.monotonic() - start < 10
    _alive(live.url)


def test_headers_that_never_finish_close_the_connection(live):
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        start = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server, not by our 10 s timeout
        assert time.monotonic() - start < 8
    _alive(live.url)


# ---- amplification, prompts too long to pay for, trailing slashes ----------------------------
def test_sequences_per_request_are_capped(live):
    r = httpx.post(live.url + C, json={"prompt": ["a", "b", "c"], "n": 3, "max_tokens": 1})
    err = _assert_error(r, 400, "n")
    assert "--max-sequences-per-request" in err["message"]
    r = httpx.post(live.url + CHAT, json={"messages": MSG, "n": 9, "max_tokens": 1})
    _assert_error(r, 400, "n")
    r = httpx.post(live.url + C, json={"prompt": ["a", "b"], "n": 4, "max_tokens": 1})
    assert r.status_code == 200 and len(r.json()["choices"]) == 8


@pytest.mark.parametrize("route", [C, CHAT])
def test_a_prompt_that_cannot_fit_is_refused_before_tokenizing(live, route):
    text = "word " * 12_000  # 60 kB: under the body limit, far over 256 tokens
    body = {"prompt": text} if route == C else {"messages": [{"role": "user", "content": text}]}
    err = _assert_error(httpx.post(live.url + route, json=body), 400)
    assert "characters cannot fit" in err["message"]


@pytest.mark.parametrize(
    "method,path", [("POST", C + "/"), ("POST", CHAT + "/"), ("GET", "/v1/models/")]
)
def test_trailing_slashes_are_a_json_404_not_a_redirect(live, method, path):
    r = httpx.request(method, live.url + path, json={"prompt": "hi"})
    _assert_error(r, 404)


# ---- 4. one request's reward cannot fail another's ----------------------------------------
def test_a_reward_outside_float32_fails_only_its_own_request(live, grader):
    huge = {
        "method": "latentseek",
        "max_steps": 3,
        "reward": {"type": "webhook", "url": grader.url + "/huge"},
    }
    innocent = {
        **LS,
        "max_steps": 3,
        "fraction": 1.0,
        "reward": {"type": "reference", "reference_answer": "9"},
    }
    results: dict = {}

    def send(name, route, latent):
        body = {"max_tokens": 8, "temperature": 0, "latent": latent}
        body |= {"prompt": "2+5="} if route == C else {"messages": MSG}
        results[name] = httpx.post(live.url + route, json=body, timeout=60)

    threads = [
        threading.Thread(target=send, args=(f"{kind}{i}-{route}", route, latent))
        for i in range(2)
        for route in (C, CHAT)
        for kind, latent in (("huge", huge), ("ok", innocent))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, r in results.items():
        assert r.status_code == 200, (name, r.text[:300])
        latent = r.json()["latent"]
        if name.startswith("huge"):
            assert latent["stopped_reason"] == "reward_error"
        else:
            assert latent["stopped_reason"] != "reward_error" and latent["steps"] >= 1


# ---- 5. the webhook deadline bounds the whole exchange -----------------------------------
@pytest.fixture(scope="module")
def slow_live(tiny_loaded, grader):
    """A server whose webhook timeout is long, with /trickle and /hold allowlisted."""
    config = _config(
        grader,
        reward_timeout_s=30.0,
        reward_url_allowlist=[grader.url + p for p in ("/reward", "/trickle", "/hold")],
        max_batch_size=16,
        max_queued_requests=64,
    )
    with LiveServer(build_app(config, loaded=tiny_loaded), config) as server:
        yield server


def _webhook_body(grader, path: str, route: str = C) -> dict:
    latent = {
        "method": "latentseek",
        "max_steps": 1,
        "reward": {"type": "webhook", "url": grader.url + path},
    }
    body = {"max_tokens": 4, "temperature": 0, "latent": latent}
    return body | ({"prompt": "2+5="} if route == C else {"messages": MSG})


def _grader_hung_up_on(grader, since: float, count: int, within: float) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        seen = sum(1 for _, t in grader.closed if t >= since)
        if seen >= count:
            return seen
        time.sleep(0.2)
    return sum(1 for _, t in grader.closed if t >= since)


@pytest.mark.parametrize("route", [C, CHAT])
def test_a_trickling_grader_is_cut_off_at_the_reward_timeout(live, grader, route):
    """`live` allows /trickle with a 2 s timeout; the grader would take 60 s+."""
    since = time.monotonic()
    r = httpx.post(live.url + route, json=_webhook_body(grader, "/trickle", route), timeout=60)
    took = time.monotonic() - since
    assert r.status_code == 200, r.text
    assert r.json()["latent"]["stopped_reason"] == "reward_error"
    assert took < 8, f"a 2 s reward timeout took {took:.1f} s"
    assert _grader_hung_up_on(grader, since, 1, within=5) >= 1  # the exchange was closed


def test_a_cancelled_request_stops_its_webhook_and_slow_graders_hold_no_one_else(slow_live, grader):
    since, calls_before = time.monotonic(), len(grader.calls)
    socks = []
    for i in range(20):  # 20 requests whose graders never answer in time
        route = C if i % 2 else CHAT
        body = json.dumps(_webhook_body(grader, "/trickle", route)).encode()
        host, port = slow_live.url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)), timeout=10)
        head = (
            f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        socks.append(sock)
    time.sleep(3)  # all 20 are waiting on their graders now
    start = time.monotonic()
    r = httpx.post(slow_live.url + C, json=_webhook_body(grader, "/hold"), timeout=60)
    took = time.monotonic() - start
    assert r.status_code == 200 and r.json()["latent"]["initial_reward"] == 0.0, r.text
    assert took < 10, f"an honest 2 s grader took {took:.1f} s behind 20 slow ones"
    for sock in socks:  # the 20 clients go away: their webhooks must stop
        sock.close()
    hung_up = _grader_hung_up_on(grader, since, 20, within=30)
    reached = sum(1 for p, _ in grader.calls[calls_before:] if p == "/trickle")
    assert reached == 20 and hung_up >= 20, (reached, hung_up)
