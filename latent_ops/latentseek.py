"""LatentSeek (Li et al. 2025, arXiv 2505.13308) as a step-wise program.

Per request, no weight changes; the latents of the answer do (ALGORITHMS.md §1):
1. greedy answer y0 with its latents z_1..z_L (final-norm states), reward R0;
   stop if R0 > threshold;
2. U = min(floor(fraction * L), max_update_tokens) latents become free parameters;
   stop if U == 0;
3. up to max_steps times while R <= threshold: one Adam step on
   -R * sum_t log softmax(W z_t)[argmax W z_t]   (a `LatentUpdate` need: the engine runs
   the rows of all refining requests in one `kernels.latent_pg_step` call), the argmax
   tokens of the updated latents become the answer's prefix (cut after a stop token), the
   model greedily continues it (a `Generate` need with `prefix_ids`: the prompt's KV cache
   is reused), and the new answer is scored. A prefix equal to the first U tokens of an
   answer already decoded gives that answer again without decoding (greedy decoding is
   deterministic), and a deterministic reward's score of a text seen before is reused.
Returns the last answer (`select="last"`, the paper) or the best-scoring one
(`select="best"`, ties to the earliest).

*Reward speculation* (exact, not an approximation): the update of step k+1 depends on the
answers only through R_k, and refinement continues only while R_k <= threshold. When the
reward can score at most one value at or below the threshold (`reward.values`: the
reference and regex rewards score 0 or -1, so with the default threshold a step that does
not stop had R = -1), R_k is known before answer k is decoded. Then the updates of the
next `speculative_steps` steps run back to back and their continuations decode together
as one batch; they are scored in order and the first that passes the threshold ends the
request, discarding the later ones (their tokens are counted in `discarded_tokens`).
Texts and reward histories equal the one-step-at-a-time run's.
The program holds its own latents and Adam state; it never calls the model or a kernel
itself, so concurrent requests share every pass the engine makes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import torch

from latent_ops.choices import Select
from latent_ops.program import Generate, Generation, LatentUpdate, Report, SamplingParams
from latent_ops.rewards import Reward, RewardError, checked_reward
from latent_ops.telemetry import Trace


@dataclass
class LatentSeekConfig:
    max_steps: int = 10
    lr: float = 0.03
    fraction: float = 0.1
    max_update_tokens: int = 300
    threshold: float = -0.2
    select: Select = "best"
    time_budget_ms: float | None = None
    return_trace: bool = False  # put the latent trajectory in the response
    report_progress: bool = False  # a `Report` need per scored answer (streamed requests)
    # Steps whose continuations may decode together when the reward allows speculation
    # (see the module docstring); 1 = one step at a time. A server setting, not per request.
    speculative_steps: int = 1


@dataclass
class Refined:
    """Program output: the chosen answer and what happened while refining."""

    generation: Generation
    method: str
    steps: int
    stopped_reason: str
    initial_reward: float | None
    final_reward: float | None
    reward_history: list[float] = field(default_factory=list)
    update_tokens: int = 0
    refinement_time_ms: float = 0.0
    refinement_tokens: int = 0
    candidates: list[str] = field(default_factory=list)  # the text scored at each history entry
    answers: list[Generation] = field(default_factory=list, repr=False)  # and its Generation
    # tokens decoded to get each candidate (0 for a reused answer; latentseek: the prefix
    # the update forced is not decoded) and reward tokens spent before its score: what a
    # budget of k steps or samples costs is the sum of the first k + 1 (or k) entries
    candidate_tokens: list[int] = field(default_factory=list)
    reused_answers: int = 0  # steps whose prefix matched an answer already decoded
    discarded_tokens: int = 0  # tokens of speculated steps after the one that stopped
    reward_evaluations: int = 0  # answers scored (a deterministic reward's repeat is reused)
    reward_tokens: int = 0  # what the reward generated (verifiers, consistency samples)
    loops: dict | None = None  # SLR: ThoughtState.summary() (loops, loop_deltas, ...)
    sampling: dict | None = None  # best_of_n, self_consistency: samples, vote_share
    budget: dict | None = None  # the budget the server granted (server/budgets.py)
    trace: Trace | None = None  # latent telemetry (latent_ops.telemetry)
    return_trace: bool = False  # the summary carries the whole trace
    return_baseline: bool = False  # the summary carries the first answer and its reward

    def baseline(self) -> dict | None:
        """The first answer the method computed (LatentSeek and the hybrid: greedy; best-of-N
        and self-consistency: the first sample) and its reward; None where the method
        computes no unrefined answer (SLR's loops run before the answer's first token)."""
        if not self.candidates:
            return None
        reward = self.reward_history[0] if self.reward_history else None
        return {"text": self.candidates[0], "reward": reward}

    @property
    def choices(self) -> list[Generation]:
        """The response's choices (Output): the one chosen answer."""
        return [self.generation]

    def summary(self) -> dict:
        return {
            "method": self.method,
            "steps": self.steps,
            "stopped_reason": self.stopped_reason,
            "initial_reward": self.initial_reward,
            "final_reward": self.final_reward,
            "reward_history": self.reward_history,
            "update_tokens": self.update_tokens,
            "refinement_time_ms": round(self.refinement_time_ms, 3),
            **(self.loops or {}),
            **(self.sampling or {}),
            **({"budget": self.budget} if self.budget is not None else {}),
            **({"baseline": self.baseline()} if self.return_baseline else {}),
            **({"trace": self.trace.summary()} if self.trace and self.return_trace else {}),
        }


def latentseek(
    prompt_ids: list[int],
    prompt_text: str,
    params: SamplingParams,
    cfg: LatentSeekConfig,
    reward: Reward,
    clock=time.monotonic,
    method: str = "latentseek",
):
    """The LatentSeek program. `params` must be greedy; `reward.score` is a sub-program;
    `method` names it in its output and progress reports (a program that runs it first)."""
    start = clock()
    deadline = None if cfg.time_budget_ms is None else start + cfg.time_budget_ms / 1000
    params = replace(params, temperature=0.0, deadline=deadline)
    [first] = yield [Generate(prompt_ids, replace(params, capture_latents=True), cache_prompt=True)]
    out = Refined(first, method, 0, "max_steps", None, None)
    out.trace, out.return_trace = Trace(), cfg.return_trace

    def done(reason: str, chosen: Generation) -> Refined:
        out.stopped_reason, out.generation = reason, chosen
        out.refinement_time_ms = (clock() - start) * 1000
        out.refinement_tokens += reward.tokens  # what the reward generated (verifiers, samples)
        out.reward_tokens = reward.tokens
        return out

    if first.finish_reason == "deadline":
        return done("time_budget", first)
    out.reward_evaluations += 1
    try:
        r0 = checked_reward((yield from reward.score(prompt_text, first.text)))
    except RewardError:
        return done("reward_error", first)
    out.initial_reward = out.final_reward = r0
    out.reward_history.append(r0)
    out.candidates.append(first.text)
    out.answers.append(first)
    out.candidate_tokens.append(len(first.token_ids) + reward.tokens)
    if cfg.report_progress:
        yield [Report(progress(out, "step", 0, r0))]
    if r0 > cfg.threshold:
        return done("threshold", first)
    n_update = min(math.floor(cfg.fraction * len(first.token_ids)), cfg.max_update_tokens)
    out.update_tokens = n_update
    if n_update == 0:
        return done("no_update", first)

    z = first.latents[:n_update].clone().float()  # [U, d]
    exp_avg, exp_avg_sq = torch.zeros_like(z), torch.zeros_like(z)
    out.trace.add(z)
    best, best_reward, current, r = first, r0, first, r0
    # Greedy decoding is deterministic: an answer is a function of its first U tokens. An
    # update that leaves the argmax prefix on one already decoded reuses that answer, and a
    # deterministic reward reuses its score, instead of decoding and scoring it again.
    decoded = {tuple(first.token_ids[:n_update]): first}
    scores = {first.text: r0}
    guess = speculation_value(reward, cfg.threshold)
    depth = max(1, cfg.speculative_steps) if guess is not None else 1

    def chosen() -> Generation:
        return current if cfg.select == "last" else best

    def new_tokens(prefix, answer: Generation) -> int:
        return len(answer.token_ids) - min(len(prefix), len(answer.token_ids))

    def stop(reason: str, fresh: dict) -> Refined:
        out.discarded_tokens += sum(new_tokens(p, a) for p, a in fresh.items())
        return done(reason, chosen())

    step = 0
    while step < cfg.max_steps:
        if deadline is not None and clock() >= deadline:
            return done("time_budget", chosen())
        # The updates of the next k steps: the first under the known R, the rest under the
        # guessed one. after[j] is (z, exp_avg, exp_avg_sq) after update j: step j's point
        # in the trace, and where to rewind to should the guess for update j + 1 be wrong.
        k = min(depth, cfg.max_steps - step)
        prefixes, after = [], []
        for j in range(k):
            [tokens] = yield [
                LatentUpdate(z, exp_avg, exp_avg_sq, guess if j else r, cfg.lr, step + j + 1)
            ]
            if isinstance(tokens, BaseException):  # this request's update was not finite
                return done("reward_error", chosen())
            prefixes.append(tuple(tokens.tolist()))
            after.append((z.clone(), exp_avg.clone(), exp_avg_sq.clone()) if k > 1 else (z,))
        todo = [p for p in dict.fromkeys(prefixes) if p not in decoded]
        fresh = {}
        if todo:
            drafts = [list(a.token_ids) for a in reversed(decoded.values())]  # newest first
            needs = [
                Generate(
                    prompt_ids, params, prefix_ids=list(p), cache_prompt=True, draft_ids=drafts
                )
                for p in todo
            ]
            fresh = dict(zip(todo, (yield needs), strict=True))
        for j, prefix in enumerate(prefixes):
            if j and r != guess:  # the step before scored another value: rewind and go on
                for state, saved in zip((z, exp_avg, exp_avg_sq), after[j - 1], strict=True):
                    state.copy_(saved)
                out.discarded_tokens += sum(new_tokens(p, a) for p, a in fresh.items())
                break
            step += 1
            out.trace.add(after[j][0])
            answer = decoded.get(prefix)
            decoded_now, spent = 0, reward.tokens
            if answer is None:
                answer = fresh.pop(prefix)
                decoded_now = new_tokens(prefix, answer)
                out.refinement_tokens += decoded_now
                if answer.finish_reason == "deadline":
                    out.steps = step
                    return stop("time_budget", fresh)
                decoded[prefix] = answer
            else:
                out.reused_answers += 1
            out.steps = step
            try:
                if reward.deterministic and answer.text in scores:
                    r = scores[answer.text]
                else:
                    out.reward_evaluations += 1
                    r = checked_reward((yield from reward.score(prompt_text, answer.text)))
                    scores[answer.text] = r
            except RewardError:
                return stop("reward_error", fresh)
            out.reward_history.append(r)
            out.candidates.append(answer.text)
            out.answers.append(answer)
            out.candidate_tokens.append(decoded_now + reward.tokens - spent)
            if cfg.report_progress:
                yield [Report(progress(out, "step", step, r))]
            current = answer
            if r > best_reward:
                best, best_reward = answer, r
            out.final_reward = r if cfg.select == "last" else best_reward
            if r > cfg.threshold:
                return stop("threshold", fresh)
    return done("max_steps", chosen())


def progress(out: Refined, unit: str, index: int, reward: float | None) -> dict:
    """A progress report: which step (or sample) was scored, its reward, and the tokens
    generated so far (the sum of the candidates' costs)."""
    return {
        "method": out.method,
        unit: index,
        "reward": reward,
        "tokens": sum(out.candidate_tokens),
    }


def speculation_value(reward: Reward, threshold: float) -> float | None:
    """The one score `reward` can give at or below `threshold`, or None when there is not
    exactly one (or the reward does not list its `values`)."""
    values = reward.values
    if values is None:
        return None
    below = {v for v in values if v <= threshold}
    return below.pop() if len(below) == 1 else None
