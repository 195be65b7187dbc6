"""latentseek_best_of_n as a program (no model): LatentSeek first, samples only when its
answer fails the threshold, then the best of the whole pool."""

from __future__ import annotations

import pytest
import torch

from latent_ops.hybrid import latentseek_best_of_n
from latent_ops.latentseek import LatentSeekConfig
from latent_ops.program import Generate, Generation, LatentUpdate, SamplingParams
from latent_ops.rewards import ReferenceReward

D = 8
PARAMS = SamplingParams(max_tokens=16, temperature=0.7, seed=5)


def _answer(text: str, n: int = 10, latents: bool = False) -> Generation:
    return Generation(
        list(range(100, 100 + n)), text, "stop", 3, latents=torch.randn(n, D) if latents else None
    )


def _program(k: int = 3, max_steps: int = 1, answer: str = "7"):
    cfg = LatentSeekConfig(max_steps=max_steps, fraction=0.5)
    return latentseek_best_of_n([1, 2], "3 + 4?", PARAMS, cfg, k, ReferenceReward(answer))


def _finish(program, results):
    with pytest.raises(StopIteration) as stop:
        program.send(results)
    return stop.value.value


def _through_latentseek(program, first: str, step: str):
    """Greedy answer `first`, one latent step answering `step`; returns the next needs."""
    [greedy] = next(program)
    assert greedy.params.temperature == 0.0 and greedy.params.capture_latents
    [update] = program.send([_answer(first, latents=True)])
    assert isinstance(update, LatentUpdate)
    [cont] = program.send([torch.tensor([9, 9, 9, 9, 9])])
    assert isinstance(cont, Generate) and cont.prefix_ids == [9] * 5
    return program.send([_answer(step, n=12)])


def test_a_verified_greedy_answer_draws_no_samples():
    program = _program()
    next(program)
    out = _finish(program, [_answer("so 7", latents=True)])
    assert out.method == "latentseek_best_of_n" and out.stopped_reason == "threshold"
    assert out.summary()["samples"] == 0 and out.choices[0].text == "so 7"
    assert out.refinement_tokens == 0


def test_unverified_latentseek_then_k_samples_seeded_like_best_of_n():
    program = _program(k=3)
    needs = _through_latentseek(program, "it is 8", "it is 6")
    assert len(needs) == 3 and [n.params.seed for n in needs] == [5, 6, 7]
    assert all(n.params.temperature == 0.7 and not n.prefix_ids for n in needs)
    out = _finish(program, [_answer(t, n=4) for t in ("so 5", "it is 7", "7")])
    assert out.reward_history == [-1.0, -1.0, -1.0, 0.0, 0.0]
    assert out.choices[0].text == "it is 7"  # the best; the tie goes to the earliest
    assert out.stopped_reason == "max_samples" and out.final_reward == 0.0
    s = out.summary()
    assert s["samples"] == 3 and s["latentseek_candidates"] == 2 and s["steps"] == 1
    # greedy 10 + the step's 7 new tokens (12 - 5 forced) + 3 samples of 4, less the answer
    assert out.candidate_tokens == [10, 7, 4, 4, 4]
    assert out.refinement_tokens == 10 + 7 + 4 + 4


def test_a_latentseek_answer_wins_a_tie_it_shares_with_the_samples_majority():
    program = _program(k=3)
    _through_latentseek(program, "it is 8", "it is 6")
    out = _finish(program, [_answer(t, n=4) for t in ("so 6", "6", "so 5")])
    # all score -1: the most common answer in the pool (6: the step and two samples) wins,
    # and its earliest holder is LatentSeek's step
    assert out.choices[0].text == "it is 6" and out.choices[0].token_ids == list(range(100, 112))
    assert out.refinement_tokens == 10 + 4 + 4 + 4  # the returned step's 7 not counted


def test_latentseek_repeats_vote_once():
    from latent_ops.hybrid import pool_pick

    texts = ["so 6", "so 6", "so 6", "it is 5", "5", "so 9"]  # 3 LatentSeek entries, 3 samples
    rewards = [-1.0] * 6
    assert pool_pick(rewards, texts, 3) == 3  # 5 has two independent votes, 6 only one
    assert pool_pick(rewards, texts, 1) == 0  # three samples saying 6: 6 wins, earliest
    assert pool_pick([-1.0, -1.0, -1.0, -1.0, 0.0, -1.0], texts, 3) == 4  # reward first


def _greedy_then(k: int, threshold: float, first: str):
    """max_steps 0: the greedy answer, then (unless it passes `threshold`) k samples."""
    cfg = LatentSeekConfig(max_steps=0, fraction=0.5, threshold=threshold)
    program = latentseek_best_of_n([1, 2], "3 + 4?", PARAMS, cfg, k, ReferenceReward("7"))
    [greedy] = next(program)
    assert greedy.params.temperature == 0.0
    return program, program.send([_answer(first, latents=True)])


def test_max_steps_0_is_a_cascade_from_the_greedy_answer():
    cfg = LatentSeekConfig(max_steps=0, fraction=0.5, threshold=-0.5)
    program = latentseek_best_of_n([1, 2], "3 + 4?", PARAMS, cfg, 3, ReferenceReward("7"))
    next(program)
    out = _finish(program, [_answer("so 7", latents=True)])  # verified: no sample
    assert out.summary()["samples"] == 0 and out.stopped_reason == "threshold"
    program, needs = _greedy_then(3, -0.5, "so 8")  # rejected: k samples, no latent step
    assert [type(n) for n in needs] == [Generate] * 3
    out = _finish(program, [_answer(t, n=4) for t in ("9", "so 7", "6")])
    assert out.choices[0].text == "so 7" and out.summary()["steps"] == 0


def test_threshold_0_always_samples_and_the_greedy_answer_stays_in_the_pool():
    # the reference reward's best is 0, so nothing exceeds threshold 0: even a right greedy
    # answer is pooled with k samples, and wins a tie with them by voting first
    program, needs = _greedy_then(2, 0.0, "so 7")
    assert len(needs) == 2
    out = _finish(program, [_answer(t, n=4) for t in ("9", "7")])
    assert out.reward_history == [0.0, -1.0, 0.0] and out.choices[0].text == "so 7"
    assert out.sampling == {"samples": 2, "latentseek_candidates": 1}
