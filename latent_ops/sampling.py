"""Token-space baselines as programs: best-of-N, self-consistency, and the consistency reward.

What a user of OptiLLM or plain vLLM runs instead of latent refinement, on the same engine
so that both are measured at the same cost:

- `best_of_n`: k samples drawn with the request's own temperature, top_p and seed (sample
  i uses seed + i), all yielded as one list of needs so they decode in the shared batch;
  the reward scores each; the best score wins, ties go to the most common final answer
  among the tied, then to the earliest sample.
- `self_consistency`: k samples, a majority vote over their extracted final answers
  (`latent_ops.rewards.extract_answer`, compared with `answers_equal`); the earliest sample
  holding the winning answer is returned, with the vote share. Needs no reward.
- `ConsistencyReward`: a reward that needs no answer key: the agreement of a candidate's
  final answer with the answers of k samples of the same prompt, sampled once per request
  (the first time it scores) and cached; in [-1, 0] (0: every sample agrees, -1: none).
  Any method can use it: LatentSeek driven by it is the latent/token hybrid
  `docs/ALGORITHMS.md` describes.

All return `latent_ops.latentseek.Refined`, the summary shape every method shares; its
`refinement_tokens` count every generated token that is not the returned answer's.
No model, no HTTP: the engine runs the needs.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace

from latent_ops.latentseek import Refined
from latent_ops.program import Generate, Generation, Report, SamplingParams
from latent_ops.rewards import (
    Reward,
    RewardError,
    answer_key,
    answers_equal,
    checked_reward,
    extract_answer,
)

# Samples drawn when a request names none (best_of_n, self_consistency, consistency reward)
DEFAULT_SAMPLES = 5
# Temperature of a consistency reward's samples when the request decodes greedily (the
# setting of self-consistency's paper and of the measurements)
CONSISTENCY_TEMPERATURE = 0.7


def sample_needs(prompt_ids: list[int], params: SamplingParams, k: int) -> list[Generate]:
    """k sampled continuations of one prompt; sample i is seeded seed + i (when seeded)."""
    return [
        Generate(
            prompt_ids,
            replace(params, seed=None if params.seed is None else params.seed + i),
            cache_prompt=True,
        )
        for i in range(k)
    ]


def majority(texts: list[str]) -> tuple[str | None, float, Counter]:
    """(winning answer, its vote share among all k, votes per answer); ties go to the
    answer whose first sample came earliest. Samples without an answer vote for nothing."""
    keys = [answer_key(t) for t in texts]
    votes = Counter(k for k in keys if k is not None)
    if not votes:
        return None, 0.0, votes
    top = max(votes.values())
    winner = next(k for k in keys if k is not None and votes[k] == top)
    return winner, top / len(texts), votes


def choose_best(
    rewards: list[float | None], texts: list[str], voters: list[str] | None = None
) -> int | None:
    """best-of-N's pick: the highest reward (None: could not be scored), ties to the most
    common final answer among `voters` (default: all the texts), then the earliest; None
    when nothing scored."""
    scored = [r for r in rewards if r is not None]
    if not scored:
        return None
    _, _, votes = majority(texts if voters is None else voters)
    tied = [i for i, r in enumerate(rewards) if r == max(scored)]
    return max(tied, key=lambda i: (votes.get(answer_key(texts[i]), 0), -i))


def _generated(samples: list[Generation], chosen: int) -> int:
    return sum(len(s.token_ids) for i, s in enumerate(samples) if i != chosen)


def best_of_n(
    prompt_ids: list[int],
    prompt_text: str,
    params: SamplingParams,
    k: int,
    reward: Reward,
    clock=time.monotonic,
    report: bool = False,
):
    """The best-of-N program: k samples in one batch, each scored, the best returned;
    `report`: a `Report` need per scored sample (streamed requests)."""
    start = clock()
    samples: list[Generation] = yield sample_needs(prompt_ids, params, k)
    rewards: list[float | None] = []
    tokens = 0
    for i, s in enumerate(samples):
        try:
            rewards.append(checked_reward((yield from reward.score(prompt_text, s.text))))
        except RewardError:
            rewards.append(None)  # this sample cannot win; the others still count
        tokens += len(s.token_ids)
        if report:
            info = {"method": "best_of_n", "sample": i + 1, "reward": rewards[-1]}
            yield [Report(info | {"tokens": tokens + reward.tokens})]
    chosen = choose_best(rewards, [s.text for s in samples])
    reason = "reward_error" if chosen is None else "max_samples"
    chosen = chosen or 0
    out = Refined(
        samples[chosen],
        "best_of_n",
        k,
        reason,
        rewards[0],
        rewards[chosen],
        reward_history=rewards,
    )
    out.candidates = [s.text for s in samples]
    out.answers = samples
    out.candidate_tokens = [len(s.token_ids) for s in samples]
    out.candidate_tokens[0] += reward.tokens  # a consistency reward samples once, first
    out.refinement_tokens = _generated(samples, chosen) + reward.tokens
    out.reward_evaluations, out.reward_tokens = len(samples), reward.tokens
    out.sampling = {"samples": k}
    out.refinement_time_ms = (clock() - start) * 1000
    return out


def self_consistency(
    prompt_ids: list[int], params: SamplingParams, k: int, clock=time.monotonic, report=False
):
    """The self-consistency program: k samples, majority vote over their final answers;
    `report`: one `Report` need once the samples are in (streamed requests)."""
    start = clock()
    samples: list[Generation] = yield sample_needs(prompt_ids, params, k)
    texts = [s.text for s in samples]
    winner, share, _ = majority(texts)
    if report:
        tokens = sum(len(s.token_ids) for s in samples)
        yield [Report({"method": "self_consistency", "sample": k, "tokens": tokens})]
    chosen = (
        0 if winner is None else next(i for i, t in enumerate(texts) if answer_key(t) == winner)
    )
    out = Refined(
        samples[chosen],
        "self_consistency",
        k,
        "max_samples" if winner is not None else "no_answer",
        None,
        None,
    )
    out.candidates = texts
    out.answers = samples
    out.candidate_tokens = [len(s.token_ids) for s in samples]
    out.refinement_tokens = _generated(samples, chosen)
    out.sampling = {"samples": k, "vote_share": round(share, 6)}
    out.refinement_time_ms = (clock() - start) * 1000
    return out


class ConsistencyReward:
    """-(1 - the share of k cached samples whose final answer equals the candidate's).

    `prompt_ids` and `params` say how the samples decode, at `temperature` (default
    CONSISTENCY_TEMPERATURE, whatever params says); they are drawn the first time `score` runs
    and reused for every later score of the same request. A candidate without a final
    answer scores -1. `tokens` counts what the samples generated (usage).
    """

    kind = "consistency"
    deterministic = True  # the samples are fixed once drawn
    values = None

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        k: int,
        temperature: float | None = None,
    ):
        params = replace(params, temperature=temperature or CONSISTENCY_TEMPERATURE)
        self.prompt_ids, self.params, self.k = prompt_ids, params, k
        self.answers: list[str | None] | None = None
        self.tokens = 0

    def score(self, prompt: str, answer: str):
        if self.answers is None:
            samples = yield sample_needs(
                self.prompt_ids, replace(self.params, logprobs=None), self.k
            )
            self.answers = [extract_answer(s.text) for s in samples]
            self.tokens = sum(len(s.token_ids) for s in samples)
        mine = extract_answer(answer)
        if mine is None:
            return -1.0
        agree = sum(1 for a in self.answers if answers_equal(a, mine))
        return agree / self.k - 1.0
