"""The HTTP surface over a real uvicorn server on the tiny model, with the openai SDK."""

import json

import httpx
import openai
import pytest

from server.app import build_app
from server.config import ServerConfig
from tests.support.live import LiveServer


@pytest.fixture(scope="module")
def server(tiny_model_dir, grader):
    config = ServerConfig(
        model=str(tiny_model_dir),
        device="cpu",
        max_batch_size=4,
        reward_url_allowlist=[grader.url + "/reward"],
    )
    with LiveServer(build_app(config)) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_models_and_health(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-model0"]
    assert httpx.get(server.url + "/health").status_code == 200


def test_completion_greedy_matches_runner_semantics(client):
    a = client.completions.create(model="tiny-model0", prompt="Hello", max_tokens=8, temperature=0)
    b = client.completions.create(model="tiny-model0", prompt="Hello", max_tokens=8, temperature=0)
    assert a.choices[0].text == b.choices[0].text
    assert a.choices[0].finish_reason in ("stop", "length")
    assert a.usage.prompt_tokens == 5 and a.usage.completion_tokens <= 8
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens


def test_completion_list_prompt_and_n(client):
    resp = client.completions.create(
        model="tiny-model0", prompt=["ab", "cde"], max_tokens=4, n=2, temperature=1.0, seed=5
    )
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    assert resp.usage.prompt_tokens == 2 + 3  # each prompt once, whatever n
    again = client.completions.create(
        model="tiny-model0", prompt=["ab", "cde"], max_tokens=4, n=2, temperature=1.0, seed=5
    )
    assert [c.text for c in again.choices] == [c.text for c in resp.choices]


def test_completion_streaming_equals_non_streaming(client):
    kwargs = dict(model="tiny-model0", prompt="Stream me", max_tokens=12, temperature=0)
    whole = client.completions.create(**kwargs)
    chunks = list(
        client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    finals = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stop_string_truncates_text(client):
    base = (
        client.completions.create(
            model="tiny-model0", prompt="What now?", max_tokens=16, temperature=0
        )
        .choices[0]
        .text
    )
    assert len(base) >= 6
    stop = base[3:5]
    resp = client.completions.create(
        model="tiny-model0", prompt="What now?", max_tokens=16, temperature=0, stop=[stop]
    )
    assert resp.choices[0].text == base[: base.index(stop)]
    assert resp.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="tiny-model0",
            prompt="What now?",
            max_tokens=16,
            temperature=0,
            stop=stop,
            stream=True,
        )
    )
    assert streamed == resp.choices[0].text


def test_chat_and_chat_streaming(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    whole = client.chat.completions.create(
        model="tiny-model0", messages=messages, max_tokens=10, temperature=0
    )
    assert whole.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        model="tiny-model0", messages=messages, max_tokens=10, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content


def test_chat_logprobs(client):
    resp = client.chat.completions.create(
        model="tiny-model0",
        messages=[{"role": "user", "content": "x"}],
        max_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens
    assert all(len(c.top_logprobs) == 2 and c.logprob <= 0 for c in content)


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
        ({"prompt": "hi", "max_tokens": -3}, 400, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 100000}, 400, "max_tokens"),
        ({"prompt": ""}, 400, "prompt"),
        ({"prompt": []}, 400, "prompt"),
        ({"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
        ({"prompt": "hi", "max_tokens": "5"}, 400, "max_tokens"),
        ({"prompt": "hi", "n": 0}, 400, "n"),
        ({"prompt": "hi", "top_p": 0}, 400, "top_p"),
        ({"prompt": "hi", "stream": "yes"}, 400, "stream"),
        ({"prompt": "hi", "latent": {"method": "bogus"}}, 400, "latent.method"),
        ({"prompt": "hi", "model": "gpt-4"}, 404, "model"),
        ({"prompt": "a" * 600}, 400, "prompt"),
        ({}, 400, "prompt"),
    ],
)
def test_bad_completion_requests(server, body, status, param):
    resp = httpx.post(server.url + "/v1/completions", json=body)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code", "request_id"}
    assert err["request_id"] == resp.headers["x-request-id"]
    assert err["param"] == param and err["code"] == status and err["message"]


@pytest.mark.parametrize(
    "raw",
    [b'{"prompt": "hi",', b"not json", b"[1, 2]", b'{"prompt": "hi", "temperature": NaN}', b""],
)
def test_malformed_bodies(server, raw):
    resp = httpx.post(
        server.url + "/v1/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["type"] == "BadRequestError"


def test_bad_chat_requests(server):
    for body in (
        {"messages": []},
        {"messages": [{"role": "wizard", "content": "x"}]},
        {"messages": [{"role": "user", "content": 5}]},
    ):
        resp = httpx.post(server.url + "/v1/chat/completions", json=body)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"].startswith("messages")


def test_server_keeps_serving_after_errors(server, client):
    httpx.post(
        server.url + "/v1/completions", content=b"{", headers={"content-type": "application/json"}
    )
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert client.completions.create(model="tiny-model0", prompt="ok", max_tokens=2).choices


def test_sdk_raises_typed_errors(client):
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny-model0", prompt="hi", max_tokens=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="hi")


def test_metrics_count_requests(server, client):
    client.completions.create(model="tiny-model0", prompt="count me", max_tokens=3)
    text = httpx.get(server.url + "/metrics").text
    assert "latentserve:request_success_total" in text
    assert "latentserve:e2e_request_latency_seconds_bucket" in text
    line = next(
        row for row in text.splitlines() if row.startswith("latentserve:generation_tokens_total")
    )
    assert float(line.split()[-1]) >= 3


def test_request_id_header(server):
    resp = httpx.post(
        server.url + "/v1/completions",
        json={"prompt": "x", "max_tokens": 1},
        headers={"x-request-id": "abc123"},
    )
    assert resp.headers["x-request-id"] == "abc123"


def test_openapi_schema_lists_routes(server):
    schema = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health"} <= set(
        schema["paths"]
    )


def test_sse_ends_with_done(server):
    with httpx.stream(
        "POST",
        server.url + "/v1/completions",
        json={"prompt": "x", "max_tokens": 3, "stream": True},
    ) as resp:
        lines = [row for row in resp.iter_lines() if row]
    assert lines[-1] == "data: [DONE]"
    assert all(row.startswith("data: ") for row in lines)
    json.loads(lines[0][6:])


def test_api_key_guards_v1_only(tiny_loaded):
    config = ServerConfig(model="unused", api_key="s3cret")
    with LiveServer(build_app(config, loaded=tiny_loaded)) as live:
        bad = httpx.get(live.url + "/v1/models", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["error"]["type"] == "AuthenticationError"
        assert httpx.get(live.url + "/v1/models").status_code == 401
        assert httpx.get(live.url + "/health").status_code == 200
        ok = openai.OpenAI(base_url=live.url + "/v1", api_key="s3cret", max_retries=0)
        assert ok.models.list().data


def _complete(client, latent: dict | None, max_tokens: int = 8):
    """A greedy completion of "What is 3 + 4?" through the SDK with this `latent` field."""
    return client.completions.create(
        model="tiny-model0",
        prompt="What is 3 + 4?",
        max_tokens=max_tokens,
        temperature=0,
        extra_body={"latent": latent} if latent is not None else None,
    )


LS = {"method": "latentseek", "reward": {"type": "reference", "reference_answer": "7"}}


@pytest.mark.parametrize(
    "latent, param",
    [
        ({"method": "latentseek"}, "latent.reward"),
        ({**LS, "lr": 0}, "latent.lr"),
        ({**LS, "lr": -1.0}, "latent.lr"),
        ({**LS, "fraction": 0}, "latent.fraction"),
        ({**LS, "fraction": 1.5}, "latent.fraction"),
        ({**LS, "max_steps": -1}, "latent.max_steps"),
        ({**LS, "max_steps": 51}, "latent.max_steps"),
        ({**LS, "time_budget_ms": -5}, "latent.time_budget_ms"),
        ({**LS, "select": "worst"}, "latent.select"),
        ({**LS, "surprise": 1}, "latent.surprise"),
        (
            {"method": "latentseek", "reward": {"type": "reference"}},
            "latent.reward.reference_answer",
        ),
        ({"method": "latentseek", "reward": {"type": "karma"}}, "latent.reward"),
        (
            {"method": "latentseek", "reward": {"type": "regex", "pattern": "("}},
            "latent.reward.pattern",
        ),
        (
            {"method": "latentseek", "reward": {"type": "regex", "pattern": "a" * 600}},
            "latent.reward.pattern",
        ),
        ({"method": "slr", "max_loops": -1}, "latent.max_loops"),
        ({"method": "slr", "max_loops": 17}, "latent.max_loops"),
        ({"method": "slr", "feedback": "telepathy"}, "latent.feedback"),
        ({"method": "slr", "residual": "h1"}, "latent.residual"),
        ({"method": "slr", "beta": -0.1}, "latent.beta"),
        (
            {"method": "slr", "exit": {"criterion": "vibes", "threshold": 1}},
            "latent.exit.criterion",
        ),
        ({"method": "slr", "exit": {"criterion": "kl"}}, "latent.exit.threshold"),
        ({"method": "slr", "adapter": "nope"}, "latent.adapter"),
        ({"method": "contrastive"}, "latent.adapter"),
        ({"method": "contrastive", "gamma": 1.5}, "latent.gamma"),
        ({"method": "slr", "layout": "spiral"}, "latent.layout"),
        ({"method": "slr", "time_budget_ms": 1e12}, "latent.time_budget_ms"),
    ],
)
def test_bad_latent_fields_name_the_field(server, latent, param):
    resp = httpx.post(server.url + "/v1/completions", json={"prompt": "hi", "latent": latent})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_latentseek_over_http_reports_what_happened(client):
    resp = _complete(
        client, {**LS, "max_steps": 2, "fraction": 0.5, "select": "last"}, max_tokens=10
    )
    latent = resp.model_extra["latent"]
    assert latent["method"] == "latentseek" and latent["steps"] <= 2
    assert len(latent["reward_history"]) == latent["steps"] + 1
    assert latent["stopped_reason"] in ("threshold", "max_steps")
    assert resp.usage.refinement_tokens >= 0
    streamed = list(
        client.chat.completions.create(
            model="tiny-model0",
            messages=[{"role": "user", "content": "3 + 4?"}],
            max_tokens=8,
            stream=True,
            extra_body={"latent": {**LS, "max_steps": 1, "fraction": 0.5}},
        )
    )
    assert any(c.choices and c.choices[0].delta.content for c in streamed)
    assert streamed[-1].model_extra.get("latent", {}).get("method") == "latentseek"


def test_slr_over_http_reports_its_loops(client):
    plain = _complete(client, None)
    zero = _complete(client, {"method": "slr", "max_loops": 0})
    assert zero.choices[0].text == plain.choices[0].text
    exit_kl = {"criterion": "kl", "threshold": 0}
    resp = _complete(client, {"method": "slr", "max_loops": 3, "exit": exit_kl})
    latent = resp.model_extra["latent"]
    assert latent["method"] == "slr" and latent["loops"] == 3
    assert latent["stopped_reason"] == "max_loops" and len(latent["loop_deltas"]) == 3
    assert latent["exit_criterion"] == "kl" and len(latent["exit_values"]) == 3


def test_huge_body_is_413(server):
    resp = httpx.post(server.url + "/v1/completions", json={"prompt": "a" * (5 << 20)})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == 413
    assert httpx.get(server.url + "/health").status_code == 200


def test_top_logprobs_without_logprobs_is_400(server):
    resp = httpx.post(
        server.url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
    )
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "top_logprobs"


def test_developer_role_is_rendered_as_system(client):
    dev = client.chat.completions.create(
        model="tiny-model0",
        messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
    )
    sys_ = client.chat.completions.create(
        model="tiny-model0",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
    )
    assert dev.usage.prompt_tokens == sys_.usage.prompt_tokens
    assert dev.choices[0].message.content == sys_.choices[0].message.content


def _refine(client, reward: dict):
    """A one-step LatentSeek completion through the SDK; returns the response."""
    latent = {"method": "latentseek", "max_steps": 1, "fraction": 0.5, "reward": reward}
    return _complete(client, latent, max_tokens=6)


def test_self_reward_over_http(client):
    resp = _refine(client, {"type": "self"})
    history = resp.model_extra["latent"]["reward_history"]
    assert history and all(-1.0 <= r <= 0.0 for r in history)


@pytest.mark.parametrize(
    "url",
    [
        "{grader}/slow",  # same host, path not on the allowlist
        "http://localhost:1/reward",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/reward",
        "ftp://127.0.0.1/reward",
        "http://user@127.0.0.1/reward",
    ],
)
def test_webhook_url_off_the_allowlist_is_400(server, grader, url):
    latent = {
        "method": "latentseek",
        "reward": {"type": "webhook", "url": url.format(grader=grader.url)},
    }
    resp = httpx.post(server.url + "/v1/completions", json={"prompt": "hi", "latent": latent})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "latent.reward.url"


def test_webhook_reward_over_http(client, grader):
    resp = _refine(client, {"type": "webhook", "url": grader.url + "/reward"})
    latent = resp.model_extra["latent"]
    assert latent["reward_history"] and set(latent["reward_history"]) <= {0.0, -1.0}
    assert any(p == "/reward" and c["prompt"] == "What is 3 + 4?" for p, c in grader.calls)


def test_return_trace_telemetry_metrics_and_plot(server, client, tmp_path):
    from server.cli import main as cli_main

    def norm_count():
        text = httpx.get(server.url + "/metrics").text
        line = next(x for x in text.splitlines() if x.startswith(key))
        return float(line.split()[-1])

    key = 'latentserve:latent_norm_count{method="slr"}'
    before = norm_count()
    lines = []
    for latent in (
        {**LS, "max_steps": 2, "fraction": 0.5, "return_trace": True},
        {"method": "slr", "max_loops": 3, "return_trace": True},
    ):
        resp = _complete(client, latent)
        info = resp.model_extra["latent"]
        trace = info["trace"]
        iterations = info["loops"] + 1 if latent["method"] == "slr" else info["steps"] + 1
        assert len(trace["points"]) == len(trace["norms"]) == iterations
        assert trace["distance"][0] == 0 and len(trace["cosine_drift"]) == iterations - 1
        lines.append(resp.model_dump_json())
    untraced = _complete(client, {"method": "slr", "max_loops": 1})
    assert untraced.model_extra["latent"].get("trace") is None
    assert norm_count() == before + 2  # one traced and one untraced SLR request
    assert (
        'latentserve:latent_distance_count{method="latentseek"}'
        in httpx.get(server.url + "/metrics").text
    )
    path = tmp_path / "traces.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert cli_main(["telemetry-plot", "--in", str(path), "--out", str(tmp_path / "t.png")]) == 0
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "none.jsonl").write_text('{"latent": {"method": "slr"}}\n')
    with pytest.raises(SystemExit, match="no request in the input has a trace"):
        cli_main(["telemetry-plot", "--in", str(tmp_path / "none.jsonl")])
