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

The program holds its own latents and Adam state; it never calls the model or a kernel
itself, so concurrent requests share every pass the engine makes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import torch

from latent_ops.program import Generate, Generation, SamplingParams
from latent_ops.rewards import RewardError


@dataclass
class LatentSeekConfig:
    max_steps: int = 10
    lr: float = 0.03
    fraction: float = 0.1
    max_update_tokens: int = 300
    threshold: float = -0.2
    select: str = "best"  # "best" | "last"
    time_budget_ms: float | None = None


@dataclass
class LatentUpdate:
    """Need: one Adam step on the rows of `z` under `reward`; result: argmax tokens [U].

    z, exp_avg, exp_avg_sq: [U, d] float32, owned by the program, updated in place.
    """

    z: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    reward: float
    lr: float
    step: int


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
    reused_answers: int = 0  # steps whose prefix matched an answer already decoded

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
        }


def latentseek(
    prompt_ids: list[int],
    prompt_text: str,
    params: SamplingParams,
    cfg: LatentSeekConfig,
    reward,
    clock=time.monotonic,
):
    """The LatentSeek program. `params` must be greedy; `reward.score` is a sub-program."""
    start = clock()
    deadline = None if cfg.time_budget_ms is None else start + cfg.time_budget_ms / 1000
    params = replace(params, temperature=0.0, deadline=deadline)
    [first] = yield [Generate(prompt_ids, replace(params, capture_latents=True), cache_prompt=True)]
    out = Refined(first, "latentseek", 0, "max_steps", None, None)

    def done(reason: str, chosen: Generation) -> Refined:
        out.stopped_reason, out.generation = reason, chosen
        out.refinement_time_ms = (clock() - start) * 1000
        return out

    if first.finish_reason == "deadline":
        return done("time_budget", first)
    try:
        r0 = yield from reward.score(prompt_text, first.text)
    except RewardError:
        return done("reward_error", first)
    out.initial_reward = out.final_reward = r0
    out.reward_history.append(r0)
    out.candidates.append(first.text)
    if r0 > cfg.threshold:
        return done("threshold", first)
    n_update = min(math.floor(cfg.fraction * len(first.token_ids)), cfg.max_update_tokens)
    out.update_tokens = n_update
    if n_update == 0:
        return done("no_update", first)

    z = first.latents[:n_update].clone().float()  # [U, d]
    exp_avg, exp_avg_sq = torch.zeros_like(z), torch.zeros_like(z)
    best, best_reward, current, r = first, r0, first, r0
    # Greedy decoding is deterministic: an answer is a function of its first U tokens. An
    # update that leaves the argmax prefix on one already decoded reuses that answer, and a
    # deterministic reward reuses its score, instead of decoding and scoring it again.
    decoded = {tuple(first.token_ids[:n_update]): first}
    scores = {first.text: r0}
    for step in range(1, cfg.max_steps + 1):
        if deadline is not None and clock() >= deadline:
            return done("time_budget", current if cfg.select == "last" else best)
        [tokens] = yield [LatentUpdate(z, exp_avg, exp_avg_sq, r, cfg.lr, step)]
        prefix = tokens.tolist()
        answer = decoded.get(tuple(prefix))
        if answer is None:
            [answer] = yield [Generate(prompt_ids, params, prefix_ids=prefix, cache_prompt=True)]
            new_tokens = len(answer.token_ids) - min(len(prefix), len(answer.token_ids))
            out.refinement_tokens += new_tokens
            if answer.finish_reason == "deadline":
                out.steps = step
                return done("time_budget", current if cfg.select == "last" else best)
            decoded[tuple(prefix)] = answer
        else:
            out.reused_answers += 1
        out.steps = step
        try:
            if getattr(reward, "deterministic", False) and answer.text in scores:
                r = scores[answer.text]
            else:
                r = yield from reward.score(prompt_text, answer.text)
                scores[answer.text] = r
        except RewardError:
            return done("reward_error", current if cfg.select == "last" else best)
        out.reward_history.append(r)
        out.candidates.append(answer.text)
        current = answer
        if r > best_reward:
            best, best_reward = answer, r
        chosen = current if cfg.select == "last" else best
        out.final_reward = r if cfg.select == "last" else best_reward
        if r > cfg.threshold:
            return done("threshold", chosen)
    return done("max_steps", current if cfg.select == "last" else best)
