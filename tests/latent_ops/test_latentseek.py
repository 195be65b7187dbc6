"""LatentSeek through the engine against a straightforward implementation of the paper
(`tests/support/paper_reference.py`: no KV cache, autograd + torch.optim.Adam, one request at
a time, `select="last"`)."""

import pytest

from latent_ops.latentseek import LatentSeekConfig, latentseek
from latent_ops.program import SamplingParams
from latent_ops.rewards import ReferenceReward, RegexReward
from server.engine.build import run_programs as engine_run
from server.engine.engine import Engine
from server.engine.runner import ModelRunner
from tests.support.paper_reference import paper_latentseek

EOS = 2


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


@pytest.mark.parametrize("speculative_steps", [1, 3])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_engine_equals_the_papers_algorithm(model, tok, prompt, speculative_steps):
    cfg = LatentSeekConfig(
        max_steps=4, lr=0.05, fraction=0.4, select="last", speculative_steps=speculative_steps
    )
    reward = ReferenceReward("72")
    ids = tok(prompt)["input_ids"]
    ref_text, ref_history, _ = paper_latentseek(model, tok, ids, prompt, 20, cfg, reward, {EOS})
    program = latentseek(ids, prompt, SamplingParams(max_tokens=20), cfg, reward)
    runner = ModelRunner(model, eos_token_ids={EOS})
    [out], updates = run_programs(model, tok, [program], runner=runner)
    assert out.generation.text == ref_text
    assert out.reward_history == ref_history
    assert out.steps == len(ref_history) - 1 and updates
    # every continuation took the prompt's KV from the prefix cache
    continuations = out.steps - out.reused_answers
    if speculative_steps == 1:
        assert runner.reused_tokens == len(ids) * continuations
    else:  # speculated steps after a success are decoded too
        assert runner.reused_tokens >= len(ids) * continuations > 0
    assert not runner.prefix_cache  # released when the request ended


class PassOn:
    """0 for one exact text, else -1: a binary reward that stops at a chosen step."""

    deterministic = True
    values = (0.0, -1.0)
    tokens = 0

    def __init__(self, text):
        self.text = text

    def score(self, prompt, answer):
        return 0.0 if answer == self.text else -1.0
        yield


class Graded:
    """Claims to be binary but scores -0.25 or -1: speculation guesses wrong and must
    rewind."""

    deterministic = True
    values = (0.0, -1.0)
    tokens = 0

    def score(self, prompt, answer):
        return -0.25 if len(answer) % 2 else -1.0
        yield


def test_speculated_steps_stop_where_one_step_at_a_time_stops(model, tok):
    prompt = PROMPTS[1]
    ids = tok(prompt)["input_ids"]

    def run(reward, speculative_steps, lr=0.05):
        cfg = LatentSeekConfig(
            max_steps=6,
            lr=lr,
            fraction=0.4,
            select="last",
            speculative_steps=speculative_steps,
        )
        program = latentseek(ids, prompt, SamplingParams(max_tokens=20), cfg, reward)
        return run_programs(model, tok, [program])[0][0]

    trail = run(ReferenceReward("-987654321"), 1)
    firsts = [i for i, c in enumerate(trail.candidates) if c not in trail.candidates[:i]]
    target = firsts[2]  # the second step that gave a new answer, so steps run after it
    for speculative_steps in (1, 4):
        out = run(PassOn(trail.candidates[target]), speculative_steps)
        assert out.stopped_reason == "threshold" and out.steps == target
        assert out.candidates == trail.candidates[: target + 1]
        assert out.reward_history == [-1.0] * target + [0.0]
    # a reward whose failing scores vary: every guess after the first is wrong
    one, many = run(Graded(), 1, lr=0.5), run(Graded(), 4, lr=0.5)
    assert len(set(one.reward_history)) > 1  # the rewind path really ran
    assert many.candidates == one.candidates and many.reward_history == one.reward_history
    assert many.generation.text == one.generation.text


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


def test_time_budget_is_a_deadline(model, tok):
    import time

    budget_ms = 1500
    # steps that reuse an answer take about a millisecond: only the budget may end this
    cfg = LatentSeekConfig(max_steps=100_000, fraction=0.5, time_budget_ms=budget_ms)
    ids = tok(PROMPTS[1])["input_ids"]
    params = SamplingParams(max_tokens=32)
    program = latentseek(ids, PROMPTS[1], params, cfg, ReferenceReward("-1"))
    start = time.monotonic()
    [out], _ = run_programs(model, tok, [program])
    elapsed = time.monotonic() - start
    assert out.stopped_reason == "time_budget" and out.steps < 100_000
    # at most one decode step (generously 0.25 s on a loaded CI machine) plus 10% over
    assert budget_ms / 1000 <= elapsed <= budget_ms / 1000 * 1.1 + 0.25
    assert out.refinement_time_ms <= budget_ms * 1.1 + 250
    assert out.generation.text  # the best answer so far, not nothing


def test_an_unchanged_prefix_reuses_the_answer_and_still_matches_the_paper(model, tok):
    cfg = LatentSeekConfig(max_steps=4, lr=1e-7, fraction=0.5, select="last")
    reward = ReferenceReward("-123456")
    prompt = PROMPTS[2]
    ids = tok(prompt)["input_ids"]
    ref_text, ref_history, _ = paper_latentseek(model, tok, ids, prompt, 16, cfg, reward, {EOS})
    runner = ModelRunner(model, eos_token_ids={EOS})
    program = latentseek(ids, prompt, SamplingParams(max_tokens=16), cfg, reward)
    [out], updates = run_programs(model, tok, [program], runner=runner)
    assert (out.generation.text, out.reward_history) == (ref_text, ref_history)
    # a step of 1e-7 moves no argmax: every step reused the first answer, decoded nothing
    assert out.steps == 4 and out.reused_answers == 4 and out.refinement_tokens == 0
    assert len(updates) == 4 and runner.reused_tokens == 0  # no continuation was prefilled
