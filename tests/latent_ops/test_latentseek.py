"""LatentSeek through the engine against a straightforward implementation of the paper.

The reference below follows the paper's code pattern: no KV cache (every token re-runs the
whole sequence), autograd on -R * sum log softmax(W z)[argmax], torch.optim.Adam, argmax
tokens back into the model, greedy continuation, stop when R > threshold; `select="last"`.
"""

import math

import pytest
import torch

from latent_ops.latentseek import LatentSeekConfig, latentseek
from latent_ops.program import SamplingParams
from latent_ops.rewards import ReferenceReward, RegexReward
from server.engine.engine import Engine
from server.engine.engine import run_programs as engine_run
from server.engine.runner import ModelRunner

EOS = 2


def _greedy_uncached(model, ids, max_new):
    out = []
    for _ in range(max_new):
        with torch.no_grad():
            logits = model(torch.tensor([ids + out])).logits[0, -1]
        out.append(int(logits.argmax()))
        if out[-1] == EOS:
            break
    return out


def paper_latentseek(model, tok, prompt, max_new, cfg, reward):
    ids = tok(prompt)["input_ids"]
    y = _greedy_uncached(model, ids, max_new)

    def score(tokens):
        gen = reward.score(prompt, tok.decode(tokens, skip_special_tokens=True))
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value

    history = [score(y)]
    if history[-1] > cfg.threshold:
        return tok.decode(y, skip_special_tokens=True), history
    n = min(math.floor(cfg.fraction * len(y)), cfg.max_update_tokens)
    with torch.no_grad():
        hidden = model.model(torch.tensor([ids + y[:-1]])).last_hidden_state[0, len(ids) - 1 :]
    z = torch.nn.Parameter(hidden[:n].clone())
    opt = torch.optim.Adam([z], lr=cfg.lr)
    head = model.lm_head.weight
    for _ in range(cfg.max_steps):
        logp = torch.log_softmax(z @ head.T, dim=-1)
        loss = -history[-1] * logp.gather(1, logp.argmax(1, keepdim=True)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            prefix = (z @ head.T).argmax(1).tolist()
        if EOS in prefix:
            prefix = prefix[: prefix.index(EOS) + 1]
            y = prefix
        else:
            y = prefix + _greedy_uncached(model, ids + prefix, max_new - len(prefix))
        history.append(score(y))
        if history[-1] > cfg.threshold:
            break
    return tok.decode(y, skip_special_tokens=True), history


def run_programs(model, tok, programs, max_batch_size=8, runner=None):
    """Run programs through a real Engine; returns outputs and the rows of each update."""
    updates = []
    runner = runner or ModelRunner(model, max_batch_size=max_batch_size, eos_token_ids={EOS})
    engine = Engine(runner, tok, on_latent_update=lambda s, rows: updates.append(rows))
    engine.start()
    try:
        return engine_run(engine, programs, timeout=120), updates
    finally:
        engine.shutdown()


PROMPTS = ["What is 2 + 3? Answer:", "Tom has 4 apples and buys 7 more.", "Compute 9*8 ="]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_engine_equals_the_papers_algorithm(model, tok, prompt):
    cfg = LatentSeekConfig(max_steps=4, lr=0.05, fraction=0.4, select="last")
    reward = ReferenceReward("72")
    ref_text, ref_history = paper_latentseek(model, tok, prompt, 20, cfg, reward)
    ids = tok(prompt)["input_ids"]
    program = latentseek(ids, prompt, SamplingParams(max_tokens=20), cfg, reward)
    runner = ModelRunner(model, eos_token_ids={EOS})
    [out], updates = run_programs(model, tok, [program], runner=runner)
    assert out.generation.text == ref_text
    assert out.reward_history == ref_history
    assert out.steps == len(ref_history) - 1 and updates
    # every iteration after the first took the prompt's KV from the prefix cache
    assert runner.reused_tokens == len(ids) * out.steps
    assert not runner.prefix_cache  # released when the request ended


def test_threshold_stops_at_once_when_the_first_answer_passes(model, tok):
    cfg = LatentSeekConfig(max_steps=5)
    ids = tok(PROMPTS[0])["input_ids"]
    [out], updates = run_programs(
        model,
        tok,
        [latentseek(ids, PROMPTS[0], SamplingParams(max_tokens=10), cfg, RegexReward(".*"))],
    )
    assert out.stopped_reason == "threshold" and out.steps == 0 and not updates
    assert out.reward_history == [0.0]


def test_concurrent_requests_share_latent_updates_and_match_solo(model, tok):
    cfg = LatentSeekConfig(max_steps=3, lr=0.05, fraction=0.5, select="best")

    def programs():
        return [
            latentseek(
                tok(p)["input_ids"], p, SamplingParams(max_tokens=16), cfg, ReferenceReward("1")
            )
            for p in PROMPTS
        ]

    solo = [run_programs(model, tok, [p])[0][0] for p in programs()]
    together, updates = run_programs(model, tok, programs())
    for a, b in zip(solo, together):
        assert a.generation.text == b.generation.text and a.reward_history == b.reward_history
    per_request = max(o.update_tokens for o in solo)
    assert max(updates) > per_request  # at least one update carried rows of several requests


def test_select_best_returns_the_first_answer_when_nothing_improves(model, tok):
    cfg = LatentSeekConfig(max_steps=2, fraction=0.5, select="best")
    ids = tok(PROMPTS[1])["input_ids"]
    [plain], _ = run_programs(
        model,
        tok,
        [
            latentseek(
                ids,
                PROMPTS[1],
                SamplingParams(max_tokens=12),
                LatentSeekConfig(max_steps=0),
                ReferenceReward("1"),
            )
        ],
    )
    [out], _ = run_programs(
        model,
        tok,
        [latentseek(ids, PROMPTS[1], SamplingParams(max_tokens=12), cfg, ReferenceReward("1"))],
    )
    assert out.reward_history == [-1.0, -1.0, -1.0]
    assert out.generation.text == plain.generation.text  # ties go to the earliest answer


def test_verdict_parsing_treats_garbage_as_not_approved():
    from latent_ops.rewards import parse_verdict

    assert parse_verdict("Looks fine.\nVerdict: True")
    assert not parse_verdict("Verdict: True... actually no")
    assert not parse_verdict("\ufffd\x00 ::::")
    assert not parse_verdict("")


def test_self_reward_runs_four_verifiers_as_one_batch(model, tok):
    from latent_ops.rewards import SelfReward

    def encode(messages):
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"][-200:]

    reward = SelfReward(encode, max_tokens=6, format="boxed")
    cfg = LatentSeekConfig(max_steps=1, fraction=0.5)
    ids = tok(PROMPTS[0])["input_ids"]
    [out], _ = run_programs(
        model, tok, [latentseek(ids, PROMPTS[0], SamplingParams(max_tokens=8), cfg, reward)]
    )
    # the random model approves nothing: every verifier fails, plus the missing \boxed{}
    assert out.reward_history[0] == pytest.approx(-(6 + 2) / 6)
    assert out.stopped_reason in ("max_steps", "threshold")


def test_webhook_reward_through_the_engine(model, tok, grader):
    from latent_ops.program import Generate, plain_generation
    from latent_ops.rewards import WebhookReward

    ids = tok(PROMPTS[0])["input_ids"]
    cfg = LatentSeekConfig(max_steps=2, fraction=0.5)
    params = SamplingParams(max_tokens=8)
    good = latentseek(ids, PROMPTS[0], params, cfg, WebhookReward(grader.url + "/reward", 5))
    slow = latentseek(ids, PROMPTS[0], params, cfg, WebhookReward(grader.url + "/slow", 1))
    plain = plain_generation([Generate(ids, SamplingParams(max_tokens=8))])
    outs, _ = run_programs(model, tok, [good, slow, plain])
    good_out, slow_out, [plain_out] = outs
    assert good_out.reward_history and set(good_out.reward_history) <= {0.0, -1.0}
    assert ("/reward", {"prompt": PROMPTS[0], "answer": good_out.generation.text}) in grader.calls
    # a webhook that times out ends that request with its first (greedy) answer
    assert slow_out.stopped_reason == "reward_error" and slow_out.reward_history == []
    assert slow_out.generation.text == plain_out.text
