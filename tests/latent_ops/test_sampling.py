"""best_of_n, self_consistency and the consistency reward as programs (no model)."""

from __future__ import annotations

import pytest

from latent_ops.program import Generate, Generation, SamplingParams
from latent_ops.rewards import ReferenceReward
from latent_ops.sampling import ConsistencyReward, best_of_n, majority, self_consistency

PARAMS = SamplingParams(max_tokens=16, temperature=0.7, seed=11)


def _gen(text: str, n: int = 4) -> Generation:
    return Generation(list(range(n)), text, "stop", 3)


def _finish(program, results):
    with pytest.raises(StopIteration) as stop:
        program.send(results)
    return stop.value.value


def test_samples_are_one_batch_seeded_seed_plus_i():
    program = self_consistency([1, 2], PARAMS, 4)
    needs = next(program)
    assert len(needs) == 4 and all(isinstance(n, Generate) for n in needs)
    assert [n.params.seed for n in needs] == [11, 12, 13, 14]
    assert all(n.params.temperature == 0.7 for n in needs)


def test_majority_vote_and_its_ties():
    winner, share, _ = majority(["so 12", "it is 7", "the answer is 7.0", "1,2 then 12.0"])
    assert winner == "12" and share == 0.5  # 12 and 7 tie at two: 12's first vote came first
    assert majority(["no number", "none"])[0] is None


def test_self_consistency_returns_the_first_sample_with_the_winning_answer():
    program = self_consistency([1], PARAMS, 5)
    next(program)
    texts = ["it is 3", "it is 7", "so 8", "7 it is", "answer 7"]
    out = _finish(program, [_gen(t, n=i + 1) for i, t in enumerate(texts)])
    assert out.choices[0].text == "it is 7" and out.summary()["vote_share"] == 0.6
    assert out.method == "self_consistency" and out.summary()["samples"] == 5
    assert out.refinement_tokens == 1 + 3 + 4 + 5  # every sample but the returned one


def test_best_of_n_picks_the_best_then_the_most_common_then_the_earliest():
    program = best_of_n([1], "q", PARAMS, 4, ReferenceReward("9"))
    next(program)
    out = _finish(program, [_gen(t) for t in ["1", "2", "3", "2"]])  # all score -1
    assert out.choices[0].text == "2"  # tie on reward: the most common answer, earliest
    program = best_of_n([1], "q", PARAMS, 3, ReferenceReward("9"))
    next(program)
    out = _finish(program, [_gen(t) for t in ["5", "is 9", "9"]])
    assert out.choices[0].text == "is 9" and out.reward_history == [-1.0, 0.0, 0.0]
    assert out.final_reward == 0.0 and out.summary()["samples"] == 3


def test_consistency_reward_samples_once_and_measures_agreement():
    reward = ConsistencyReward([1, 2], SamplingParams(max_tokens=8), 4)
    assert reward.params.temperature > 0  # a greedy request still samples
    score = reward.score("q", "it is 7")
    needs = next(score)
    assert len(needs) == 4
    value = _finish(score, [_gen(t, n=2) for t in ["7", "7", "8", "none"]])
    assert value == -0.5 and reward.tokens == 8
    again = reward.score("q", "8 it is")  # cached: asks the model nothing
    with pytest.raises(StopIteration) as stop:
        next(again)
    assert stop.value.value == -0.75
