"""What a refinement changed and cost, and live progress (tiny model, real uvicorn, the
openai SDK): latent.return_baseline, usage.refinement, progress chunks while streaming
for LatentSeek steps, best-of-N samples and SLR loops, and a client that stops reading
after a progress event cancelling the rest."""

from __future__ import annotations

import time

import openai
import pytest

from server.app import build_app
from server.config import ServerConfig
from tests.support.live import LiveServer, metric

MODEL = "tiny-model0"
NEVER = {"type": "reference", "reference_answer": "unreachable"}
LS = {"method": "latentseek", "max_steps": 2, "fraction": 1.0, "reward": NEVER}


@pytest.fixture(scope="module")
def live(tiny_model_dir, grader):
    config = ServerConfig(
        model=str(tiny_model_dir),
        device="cpu",
        max_batch_size=8,
        reward_url_allowlist=[grader.url + "/hold"],
    )
    with LiveServer(build_app(config)) as server:
        yield server


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0)


def _chat(client, latent, **kwargs):
    args = {"max_tokens": 6, "temperature": 0.7, "seed": 3} | kwargs
    return client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "2 + 5 = ?"}],
        extra_body={"latent": latent},
        **args,
    )


def test_return_baseline_puts_the_first_answer_beside_the_refined_one(client):
    plain = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "2 + 5 = ?"}],
        max_tokens=6,
        temperature=0,
    )
    out = _chat(client, LS | {"return_baseline": True}, temperature=0)
    base = out.model_extra["latent"]["baseline"]
    assert base["text"] == plain.choices[0].message.content  # the greedy answer
    assert base["reward"] == out.model_extra["latent"]["initial_reward"] == -1.0
    bon = {"method": "best_of_n", "samples": 3, "reward": NEVER, "return_baseline": True}
    s = _chat(client, bon).model_extra["latent"]
    assert s["baseline"]["reward"] == s["reward_history"][0]
    assert "baseline" not in _chat(client, LS, temperature=0).model_extra["latent"] or (
        _chat(client, LS, temperature=0).model_extra["latent"]["baseline"] is None
    )
    slr = _chat(client, {"method": "slr", "max_loops": 2, "return_baseline": True})
    assert slr.model_extra["latent"]["baseline"] is None  # SLR computes no unrefined answer


def test_usage_reports_what_refinement_cost(client):
    out = _chat(client, LS, temperature=0)
    u = out.usage.model_extra["refinement"]
    assert u["latent_update_rows"] > 0 and u["reward_evaluations"] >= 1
    assert u["generated_tokens"] >= out.usage.completion_tokens and u["forward_passes"] > 0
    assert set(u["time_ms"]) == {"queue", "decode", "latent_update", "reward", "total"}
    assert u["time_ms"]["total"] >= u["time_ms"]["latent_update"] > 0
    plain = _chat(client, {"method": "none"})
    assert plain.usage.model_extra.get("refinement") is None


def _progress(stream):
    events, text, final = [], "", None
    for chunk in stream:
        latent = (chunk.model_extra or {}).get("latent")
        if latent and "progress" in latent:
            assert chunk.choices == [] and text == ""  # before the answer
            events.append(latent["progress"])
        elif latent:
            final = latent
        for c in chunk.choices:
            text += c.delta.content or ""
    return events, text, final


@pytest.mark.parametrize(
    "latent,unit,count",
    [
        (LS, "step", 3),  # the greedy answer (step 0) and two steps
        ({"method": "best_of_n", "samples": 3, "reward": NEVER}, "sample", 3),
        ({"method": "slr", "max_loops": 2}, "loop", 2),
    ],
)
def test_streaming_refinement_reports_each_step_before_the_answer(client, latent, unit, count):
    events, text, final = _progress(_chat(client, latent, stream=True))
    assert (
        [e[unit] for e in events] == list(range(count))
        if unit == "step"
        else list(range(1, count + 1))
    )
    if unit != "loop":
        tokens = [e["tokens"] for e in events]
        assert tokens == sorted(tokens) and all("reward" in e for e in events)
    assert text and final["stopped_reason"]
    assert {e["method"] for e in events} == {latent["method"]}


def test_the_hybrid_reports_its_steps_and_samples_under_its_own_name(client):
    hybrid = LS | {"method": "latentseek_best_of_n", "samples": 2}
    events, text, final = _progress(_chat(client, hybrid, temperature=0.7, stream=True))
    assert {e["method"] for e in events} == {"latentseek_best_of_n"}
    assert [e["step"] for e in events if "step" in e] == [0, 1, 2]
    assert [e["sample"] for e in events if "sample" in e] == [1, 2]
    assert text and final["method"] == "latentseek_best_of_n"


def test_a_client_that_stops_after_a_progress_event_cancels_the_rest(client, live, grader):
    before = metric(live.url, "latentserve:requests_cancelled_total")
    slow = {"type": "webhook", "url": grader.url + "/hold"}  # 2 s per score
    long = LS | {"max_steps": 40, "reward": slow, "threshold": 1.0}  # never good enough
    stream = _chat(client, long, temperature=0, stream=True)
    for chunk in stream:
        if (chunk.model_extra or {}).get("latent", {}).get("progress"):
            break  # a reward good enough for this client
    stream.close()
    deadline = time.monotonic() + 10
    while metric(live.url, "latentserve:requests_cancelled_total") == before:
        assert time.monotonic() < deadline, "the refinement was not cancelled"
        time.sleep(0.1)
