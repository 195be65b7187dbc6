"""Programs on their own: latentseek() and slr() driven with .send(), no model, no engine.

Each test plays the engine: it reads the needs a program yields and sends back made-up
results, so the program's control flow (steps, stops, rewinds on failure) is checked
without decoding anything."""

from __future__ import annotations

import pytest
import torch

from latent_ops.latentseek import LatentSeekConfig, latentseek
from latent_ops.program import Generate, Generation, LatentUpdate, SamplingParams
from latent_ops.rewards import ReferenceReward
from latent_ops.slr import SLRConfig, slr

D = 8


def _answer(text: str, n: int = 10, latents: bool = True) -> Generation:
    return Generation(
        token_ids=list(range(100, 100 + n)),
        text=text,
        finish_reason="stop",
        prompt_tokens=3,
        latents=torch.randn(n, D) if latents else None,
    )


def _finish(program, needs):
    """Run `program` past its last need; its output (StopIteration's value)."""
    with pytest.raises(StopIteration) as stop:
        program.send(needs)
    return stop.value.value


def _program(**cfg):
    config = LatentSeekConfig(fraction=0.5, **cfg)
    params = SamplingParams(max_tokens=16)
    return latentseek([1, 2, 3], "3 + 4?", params, config, ReferenceReward("7"))


def test_latentseek_steps_until_the_reward_passes():
    program = _program(max_steps=5)
    [first] = next(program)
    assert isinstance(first, Generate) and first.params.capture_latents and first.cache_prompt
    [update] = program.send([_answer("it is 8")])  # reward -1: an update follows
    assert isinstance(update, LatentUpdate) and update.z.shape == (5, D)
    assert update.reward == -1.0 and update.step == 1
    [cont] = program.send([torch.tensor([7, 7, 7, 7, 7])])  # a new argmax prefix
    assert isinstance(cont, Generate) and cont.prefix_ids == [7, 7, 7, 7, 7]
    out = _finish(program, [_answer("it is 7")])  # reward 0 > threshold: done
    assert out.stopped_reason == "threshold" and out.reward_history == [-1.0, 0.0]
    assert out.steps == 1 and [g.text for g in out.choices] == ["it is 7"]
    assert out.summary()["final_reward"] == 0.0


def test_latentseek_reuses_an_answer_whose_prefix_it_has_decoded():
    program = _program(max_steps=2)
    next(program)
    program.send([_answer("it is 8")])
    # the update leaves the argmax prefix on the first answer's own tokens: no decoding
    [again] = program.send([torch.tensor(list(range(100, 105)))])
    assert isinstance(again, LatentUpdate) and again.step == 2
    out = _finish(program, [torch.tensor(list(range(100, 105)))])
    assert out.stopped_reason == "max_steps" and out.reused_answers == 2


def test_a_non_finite_update_stops_with_reward_error_and_keeps_the_best_answer():
    program = _program(max_steps=5)
    next(program)
    program.send([_answer("it is 8")])
    out = _finish(program, [FloatingPointError("latent update is not finite")])
    assert out.stopped_reason == "reward_error" and out.choices[0].text == "it is 8"


def test_slr_is_one_generate_with_thoughts():
    cfg = SLRConfig(max_loops=3)
    program = slr([1, 2, 3], SamplingParams(max_tokens=8), cfg)
    [need] = next(program)
    assert isinstance(need, Generate) and need.thoughts.cfg is cfg
    generation = _answer("42", latents=False)
    generation.thoughts = {"loops": 2, "stopped_reason": "converged", "loop_deltas": [0.1, 0.01]}
    out = _finish(program, [generation])
    assert (out.method, out.steps, out.stopped_reason) == ("slr", 2, "converged")
    assert out.refinement_tokens == 2 and out.choices == [generation]
