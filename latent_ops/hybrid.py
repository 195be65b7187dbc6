"""The latent/token hybrid: best-of-N over LatentSeek's candidates and k samples.

`latentseek_best_of_n` runs LatentSeek first (greedy answer, then up to `max_steps` latent
updates under the reward, stopping at the threshold). When LatentSeek stops because its
reward passed the threshold (or it failed: reward error, time budget), that is the answer
and nothing is sampled. Otherwise (`max_steps`, or `no_update` for an answer too short to
update) it draws k samples at the request's temperature, top_p and seed (one batch, as
`best_of_n`), scores them with the same reward, and returns the best of the whole pool:
LatentSeek's answers (greedy first) and the samples, by `pool_pick` (highest reward, ties
to the answer most common in the pool, counting each distinct LatentSeek answer once,
then the earliest, so a LatentSeek answer wins a tie with a sample holding the same final
answer).

Two settings make it a different design, and eval measures them as such:
  * `max_steps: 0`: the greedy answer alone, then samples only if it fails the threshold
    (a cascade in token space: the greedy answer is the first candidate and the cheapest);
  * `max_steps: 0, threshold: 0` (with a reward whose maximum is 0, such as `arithmetic`
    or `reference`, no answer passes): the greedy answer and k samples, always. On this
    project's model greedy is right about twice as often as a sample, so adding it to the
    pool is the cheapest candidate best-of-N can get.

Why this design (docs/EVALUATION.md has the measurements): on the synthetic problems
with the arithmetic reward, LatentSeek's steps are cheap candidates (a step decodes only
what its changed prefix does not share, about 15 tokens against 70 for a sample) and it
beats best-of-N at equal tokens where its curve exists, but its curve flattens early: its
candidates are all close to the greedy answer. Samples are expensive but diverse. The pool
spends the cheap candidates first and pays for samples only on the problems the verifier
still rejects; the majority tie-break lets the samples also act as a vote among the answers
the verifier cannot tell apart.

The program holds no model state of its own: LatentSeek's needs (`Generate`,
`LatentUpdate`) and the samples' `Generate` needs go to the engine like any other.
Returns `Refined` with `method="latentseek_best_of_n"`: `candidates`, `reward_history`
and `candidate_tokens` list LatentSeek's entries and then the samples';
`sampling = {"samples": k drawn, "latentseek_candidates": n}`.
"""

from __future__ import annotations

import time

from latent_ops.latentseek import LatentSeekConfig, latentseek, progress
from latent_ops.program import Generation, Report, SamplingParams
from latent_ops.rewards import Reward, RewardError, checked_reward
from latent_ops.sampling import choose_best, sample_needs

METHOD = "latentseek_best_of_n"
# LatentSeek stopped for one of these: still unverified, so the samples are drawn
SAMPLE_AFTER = ("max_steps", "no_update")


def pool_pick(rewards: list[float | None], texts: list[str], n_seek: int) -> int:
    """The pick among LatentSeek's `n_seek` candidates and the samples after them: the
    highest reward, ties to the answer most common among the voters, then the earliest.
    Voters are the samples and each *distinct* LatentSeek answer once: LatentSeek's steps
    often re-decode one answer, and those repeats are not independent evidence."""
    voters = list(dict.fromkeys(texts[:n_seek])) + texts[n_seek:]
    pick = choose_best(rewards, texts, voters)
    return 0 if pick is None else pick


def latentseek_best_of_n(
    prompt_ids: list[int],
    prompt_text: str,
    params: SamplingParams,
    cfg: LatentSeekConfig,
    k: int,
    reward: Reward,
    clock=time.monotonic,
    report: bool = False,
):
    """The hybrid program. `params` are the request's (LatentSeek decodes them greedily;
    the samples use their temperature, top_p and seed)."""
    start = clock()
    out = yield from latentseek(prompt_ids, prompt_text, params, cfg, reward, clock, METHOD)
    n_seek = len(out.candidates)
    out.sampling = {"samples": 0, "latentseek_candidates": n_seek}
    if out.stopped_reason not in SAMPLE_AFTER or k == 0:
        return out

    samples: list[Generation] = yield sample_needs(prompt_ids, params, k)
    # a deterministic reward scores a text once (a sample may repeat a LatentSeek answer)
    known = dict(zip(out.candidates, out.reward_history)) if reward.deterministic else {}
    spent = reward.tokens
    for s in samples:
        r = known.get(s.text)
        if r is None:
            out.reward_evaluations += 1
            try:
                r = checked_reward((yield from reward.score(prompt_text, s.text)))
            except RewardError:
                r = None  # this sample cannot win; the others still count
            if reward.deterministic and r is not None:
                known[s.text] = r
        out.reward_history.append(r)
        out.candidates.append(s.text)
        out.answers.append(s)
        out.candidate_tokens.append(len(s.token_ids) + reward.tokens - spent)
        spent = reward.tokens
        if report:
            yield [Report(progress(out, "sample", len(out.candidates) - n_seek, r))]

    pick = pool_pick(out.reward_history, out.candidates, n_seek)
    out.generation = out.answers[pick]
    out.final_reward = out.reward_history[pick]
    out.stopped_reason = "max_samples"
    # every generated token (rewards' included) that is not the returned answer's: a
    # candidate's entry holds what decoding it cost, at most its own length
    decoded = min(len(out.generation.token_ids), out.candidate_tokens[pick])
    out.refinement_tokens = sum(out.candidate_tokens) - decoded
    out.sampling = {"samples": k, "latentseek_candidates": n_seek}
    out.reward_tokens = reward.tokens
    out.refinement_time_ms = (clock() - start) * 1000
    return out
