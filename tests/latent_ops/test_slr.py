"""SLR through the engine: against an uncached reference of the same loop, batched beside
other requests, exit criteria, and the feedback maths; the `recurrent` layout's chunks
(same answer as one chunk, logits bounded by the chunk, deadlines while looping)."""

import time

import pytest
import torch

from latent_ops.lora import AdapterConfig, LoopAdapter, LoRABank
from latent_ops.program import Generate, SamplingParams
from latent_ops.slr import SLRConfig, Thoughts, ThoughtState, loop_input, slr, timestep_embedding
from server.engine import recurrent
from server.engine.build import run_programs as engine_run
from server.engine.engine import Engine
from server.engine.runner import ModelRunner, Sequence
from tests.tiny import build_model

EOS = 2
PROMPTS = ["What is 2 + 3? Answer:", "Tom has 4 apples and buys 7 more.", "Compute 9*8 ="]


def run(model, tok, programs):
    runner = ModelRunner(model, max_batch_size=8, eos_token_ids={EOS})
    engine = Engine(runner, tok)
    engine.start()
    try:
        return engine_run(engine, programs, timeout=120), runner
    finally:
        engine.shutdown()


def plain(ids, params):
    """Plain decoding as a program (the yardstick for max_loops 0 and for neighbours)."""
    [generation] = yield [Generate(ids, params)]
    return generation


@torch.no_grad()
def reference_slr(model, prompt_ids, cfg: SLRConfig, max_tokens: int):
    """The thoughts layout the plain way: no KV cache, the whole sequence of input
    embeddings through the model at every position, greedy."""
    embed = model.get_input_embeddings().weight
    state = ThoughtState(cfg, embed[prompt_ids[-1]].float(), float(embed.norm(dim=-1).mean()))
    inputs = embed[prompt_ids]  # [S, d]

    def last():
        out = model.model(inputs_embeds=inputs[None]).last_hidden_state[0, -1]
        return out, model.lm_head(out)

    latent, logits = last()
    while not state.observe(latent, logits, 0.0):
        inputs = torch.cat([inputs, state.next_input(embed)[None]])
        latent, logits = last()
    tokens = []
    while len(tokens) < max_tokens:
        tokens.append(int(logits.argmax()))
        if tokens[-1] == EOS:
            break
        inputs = torch.cat([inputs, embed[tokens[-1]][None]])
        latent, logits = last()
    return tokens, state


@pytest.mark.parametrize(
    "cfg",
    [
        SLRConfig(max_loops=3, feedback="soft"),
        SLRConfig(max_loops=2, feedback="hidden", residual="h0", beta=0.5, timestep_scale=0.3),
        SLRConfig(max_loops=4, feedback="hybrid", residual="prev", beta=0.2),
    ],
    ids=["soft", "hidden-h0-timestep", "hybrid-prev"],
)
def test_engine_equals_uncached_reference(model, tok, cfg):
    params = SamplingParams(max_tokens=12, temperature=0.0)
    programs = [slr(tok(p)["input_ids"], params, cfg) for p in PROMPTS]
    outs, runner = run(model, tok, programs)  # three requests loop in one batch
    for prompt, out in zip(PROMPTS, outs, strict=True):
        tokens, state = reference_slr(model, tok(prompt)["input_ids"], cfg, 12)
        assert out.generation.token_ids == tokens
        assert out.loops["loops"] == cfg.max_loops == state.loops
        assert out.stopped_reason == "max_loops"
        assert out.loops["loop_deltas"] == pytest.approx(state.deltas, rel=1e-3, abs=1e-5)


@torch.no_grad()
def reference_recurrent(model, prompt_ids, cfg: SLRConfig, max_tokens: int):
    """The recurrent layout the plain way: every loop reruns the whole prompt; the answer
    is decoded, uncached, after the last loop's inputs."""
    embed = model.get_input_embeddings().weight
    norm = float(embed.norm(dim=-1).mean())
    h0 = embed[prompt_ids].float()
    state = ThoughtState(cfg, h0[-1], norm)
    inputs, prev = h0, None

    def run(x):
        out = model.model(inputs_embeds=x[None]).last_hidden_state[0]
        return out, model.lm_head(out)

    states, logits = run(inputs)
    while not state.observe(states[-1], logits[-1], 0.0):
        t = state.loops + 1
        inputs = loop_input(cfg, t, states, torch.log_softmax(logits, -1), h0, prev, embed, norm)
        prev = inputs
        states, logits = run(inputs)
    tokens = []
    while len(tokens) < max_tokens:
        tokens.append(int(logits[-1].argmax()))
        if tokens[-1] == EOS:
            break
        inputs = torch.cat([inputs, embed[tokens[-1]][None]])
        states, logits = run(inputs)
    return tokens, state


@pytest.mark.parametrize(
    "cfg",
    [
        SLRConfig(layout="recurrent", max_loops=2, feedback="soft"),
        SLRConfig(layout="recurrent", max_loops=3, feedback="hidden", residual="h0", beta=0.5),
        SLRConfig(layout="recurrent", max_loops=2, feedback="hybrid", timestep_scale=0.2),
    ],
    ids=["soft", "hidden-h0", "hybrid-timestep"],
)
def test_recurrent_layout_equals_uncached_reference(model, tok, cfg):
    params = SamplingParams(max_tokens=10, temperature=0.0)
    plain_cfg = SLRConfig(max_loops=2)  # a thoughts-layout neighbour in the same batch
    programs = [slr(tok(p)["input_ids"], params, cfg) for p in PROMPTS]
    outs, _ = run(model, tok, [*programs, slr(tok(PROMPTS[0])["input_ids"], params, plain_cfg)])
    for prompt, out in zip(PROMPTS, outs, strict=False):
        tokens, state = reference_recurrent(model, tok(prompt)["input_ids"], cfg, 10)
        assert out.generation.token_ids == tokens
        assert out.loops["loops"] == cfg.max_loops == state.loops
        assert out.loops["loop_deltas"] == pytest.approx(state.deltas, rel=1e-3, abs=1e-5)
    [alone], _ = run(model, tok, [slr(tok(PROMPTS[0])["input_ids"], params, plain_cfg)])
    assert outs[-1].generation.token_ids == alone.generation.token_ids


def test_zero_loops_is_exactly_plain_greedy(model, tok):
    ids = tok(PROMPTS[1])["input_ids"]
    params = SamplingParams(max_tokens=16, temperature=0.0)
    programs = [slr(ids, params, SLRConfig(max_loops=0)), plain(ids, params)]
    (looped, greedy), _ = run(model, tok, programs)
    assert looped.generation.token_ids == greedy.token_ids
    assert looped.generation.text == greedy.text
    assert looped.loops["loops"] == 0 and looped.loops["loop_deltas"] == []


def test_loops_beside_plain_requests_change_nothing_for_them(model, tok):
    ids = tok(PROMPTS[2])["input_ids"]
    params = SamplingParams(max_tokens=10, temperature=0.0)
    (alone,), _ = run(model, tok, [plain(ids, params)])
    (_, beside, _), _ = run(
        model,
        tok,
        [
            slr(ids, params, SLRConfig(max_loops=3)),
            plain(ids, params),
            slr(ids, params, SLRConfig(max_loops=1)),
        ],
    )
    assert beside.token_ids == alone.token_ids


@pytest.mark.parametrize(
    "criterion, threshold, loops",
    [("latent_diff", 1e9, 1), ("kl", 1e9, 1), ("entropy", 1e9, 1), ("argmax", 1e9, 6)],
)
def test_exit_criteria(model, tok, criterion, threshold, loops):
    cfg = SLRConfig(max_loops=6, exit_criterion=criterion, exit_threshold=threshold)
    [out], _ = run(model, tok, [slr(tok(PROMPTS[0])["input_ids"], SamplingParams(8), cfg)])
    assert out.loops["loops"] == loops
    assert len(out.loops["exit_values"]) == loops
    assert out.stopped_reason == ("converged" if loops == 1 else "max_loops")


def test_feedback_maths():
    torch.manual_seed(0)
    embed = torch.randn(50, 8)
    latent, logits = torch.randn(8) * 30, torch.randn(50)
    state = ThoughtState(SLRConfig(feedback="soft"), torch.zeros(8), 2.0)
    state.observe(latent, logits, 0.0)
    torch.testing.assert_close(state.next_input(embed), torch.softmax(logits, -1) @ embed)
    state = ThoughtState(SLRConfig(feedback="hidden", residual="h0", beta=0.5), embed[3], 2.0)
    state.observe(latent, logits, 0.0)
    x = state.next_input(embed)
    torch.testing.assert_close(x, latent / latent.norm() * 2.0 + 0.5 * embed[3])
    e = timestep_embedding(3, 9)
    assert e.shape == (9,) and float(e.norm()) == pytest.approx(1.0)
    assert not torch.allclose(e, timestep_embedding(4, 9))


def test_a_spent_time_budget_stops_the_loops_and_still_answers(model, tok):
    ids = tok(PROMPTS[0])["input_ids"]
    params = SamplingParams(max_tokens=6, temperature=0.0)
    cfg = SLRConfig(max_loops=50, time_budget_ms=0.0)
    (out, zero), _ = run(
        model, tok, [slr(ids, params, cfg), slr(ids, params, SLRConfig(max_loops=0))]
    )
    assert out.stopped_reason == "time_budget" and out.loops["loops"] == 0 == out.steps
    assert out.generation.token_ids == zero.generation.token_ids


LONG = "Tom has 4 apples and buys 7 more, then gives 3 away. How many are left? " * 2


def run_recurrent(model, ids, cfg, chunk, lora=None):
    """One recurrent sequence on a bare runner with `recurrent_chunk=chunk`, greedy."""
    runner = ModelRunner(model, max_batch_size=2, eos_token_ids={EOS}, recurrent_chunk=chunk)
    runner.lora = lora
    seq = Sequence(0, ids, SamplingParams(max_tokens=8, temperature=0.0), thoughts=Thoughts(cfg))
    runner.add(seq)
    while runner.has_work:
        runner.step()
    return seq


def _adapted(tok):
    """A tiny model of its own with a randomised 3-loop adapter "ad" installed."""
    model = build_model(len(tok), seed=3)
    adapter = LoopAdapter(AdapterConfig(loops=3, rank=4), model)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    bank = LoRABank()
    bank.add("ad", adapter)
    bank.install(model)
    return model, bank


@pytest.mark.parametrize(
    "cfg",
    [
        SLRConfig(layout="recurrent", max_loops=3, feedback="soft"),
        SLRConfig(layout="recurrent", max_loops=3, feedback="hidden", residual="prev", beta=0.3),
        SLRConfig(layout="recurrent", max_loops=2, feedback="hybrid", timestep_scale=0.2),
        SLRConfig(layout="recurrent", max_loops=3, feedback="soft", residual="h0", adapter="ad"),
        SLRConfig(
            layout="recurrent", max_loops=3, feedback="hidden", timestep_scale=0.5, adapter="ad"
        ),
    ],
    ids=["soft", "hidden-prev", "hybrid-timestep", "soft-adapter", "hidden-adapter"],
)
def test_recurrent_chunks_equal_one_chunk(model, tok, cfg):
    ids = tok(LONG)["input_ids"]
    bank = None
    if cfg.adapter is not None:
        model, bank = _adapted(tok)
    whole = run_recurrent(model, ids, cfg, chunk=len(ids), lora=bank)
    assert len(ids) > 3 * 37
    for chunk in (37, 64):  # several chunks per pass, the last one short
        part = run_recurrent(model, ids, cfg, chunk=chunk, lora=bank)
        assert part.output_ids == whole.output_ids
        assert part.loops == whole.loops == cfg.max_loops
        assert part.thought_state.deltas == pytest.approx(
            whole.thought_state.deltas, rel=1e-4, abs=1e-6
        )
    if bank is None:  # and both are the layout taken literally
        tokens, state = reference_recurrent(model, ids, cfg, 8)
        assert whole.output_ids == tokens and whole.loops == state.loops
    else:  # the adapter is really used: without it the loops go elsewhere
        base = run_recurrent(model, ids, SLRConfig(**{**vars(cfg), "adapter": None}), 37)
        assert base.thought_state.deltas != pytest.approx(part.thought_state.deltas)


@pytest.mark.parametrize("feedback", ["soft", "hybrid", "hidden"])
def test_recurrent_logits_and_loop_inputs_stay_within_a_chunk(model, tok, monkeypatch, feedback):
    ids = tok(LONG)["input_ids"]
    cfg = SLRConfig(layout="recurrent", max_loops=2, feedback=feedback)
    rows = {"lm_head": [], "loop_input": []}
    real_input = recurrent.loop_input

    def spy_input(cfg, t, latent, *args):
        rows["loop_input"].append(latent.shape[0])
        return real_input(cfg, t, latent, *args)

    monkeypatch.setattr(recurrent, "loop_input", spy_input)
    runner = ModelRunner(model, eos_token_ids={EOS}, recurrent_chunk=32)
    head = runner.lm_head

    def spy_head(x):
        rows["lm_head"].append(x.reshape(-1, x.shape[-1]).shape[0])
        return head(x)

    runner.lm_head = spy_head
    seq = Sequence(0, ids, SamplingParams(max_tokens=4), thoughts=Thoughts(cfg))
    runner.add(seq)
    while runner.has_work:
        runner.step()
    assert seq.loops == 2 and len(seq.output_ids) > 0
    assert len(ids) > 3 * 32
    assert max(rows["lm_head"]) <= 32 and max(rows["loop_input"]) <= 32
    # every position of loops 1 and 2 got its input, a chunk at a time
    assert sum(rows["loop_input"]) == 2 * len(ids)
    if feedback != "hidden":  # soft feedback reads every position's logits, chunk by chunk
        assert max(rows["lm_head"]) == 32
    else:  # hidden: only the last position's (per pass) and the sampled token's
        assert max(rows["lm_head"]) == 1


def test_a_deadline_ends_a_looping_recurrent_request(model, tok):
    ids = tok(LONG)["input_ids"]
    cfg = SLRConfig(layout="recurrent", max_loops=500, feedback="hidden")
    runner = ModelRunner(model, max_batch_size=4, eos_token_ids={EOS}, recurrent_chunk=8)
    engine = Engine(runner, tok)
    engine.start()
    try:
        params = SamplingParams(max_tokens=4, temperature=0.0, deadline=time.monotonic() + 0.5)
        [out] = engine_run(engine, [slr(ids, params, cfg)], timeout=60)
    finally:
        engine.shutdown()
    # the engine's deadline reaches a sequence still looping (runner.running includes it)
    assert out.generation.finish_reason == "deadline"
    assert out.generation.token_ids == [] and out.loops["loops"] < 500
    assert not runner.has_work
