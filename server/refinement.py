"""Turn a request's `latent` field into a program, checked against the server's limits.

`build_program` returns the program the engine runs and the method name for metrics.
Plain generation (no `latent`, or method `none`) is one `Generate` need per prompt and
choice; `latentseek` wraps one prompt in `latent_ops.latentseek.latentseek` with its
reward, `slr`/`contrastive` in `latent_ops.slr.slr`, `best_of_n`/`self_consistency` in
`latent_ops.sampling`, `latentseek_best_of_n` in `latent_ops.hybrid`. Limits that only the server knows (`--max-refinement-steps`,
`--max-samples`, `--max-time-budget-ms`) are enforced here, as 400s naming the field and the limit, and
`--request-timeout` becomes each request's deadline (plain generation stops there and
answers what it has with `finish_reason: "length"`; refinement returns its best answer
with `stopped_reason: "time_budget"`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields

from latent_ops.choices import SAMPLED_METHODS, SAMPLING_METHODS
from latent_ops.hybrid import latentseek_best_of_n
from latent_ops.latentseek import LatentSeekConfig, latentseek
from latent_ops.program import Generate, SamplingParams, plain_generation
from latent_ops.rewards import (
    ReferenceReward,
    RegexReward,
    SelfReward,
    WebhookReward,
)
from latent_ops.sampling import (
    DEFAULT_SAMPLES,
    ConsistencyReward,
    best_of_n,
    self_consistency,
)
from latent_ops.slr import REQUEST_FIELDS as SLR_REQUEST_FIELDS
from latent_ops.slr import SLRConfig, slr
from latent_ops.urls import allowed_url
from server.budgets import Budget, budget_for, reported
from server.errors import APIError


def sampling_params(body, max_tokens: int, logprobs: int | None, choice: int = 0, deadline=None):
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=None if body.seed is None else body.seed + choice,
        stop=body.stop_list(),
        logprobs=logprobs,
        deadline=deadline,
    )


def chat_encoder(tokenizer):
    """messages -> token ids through the model's chat template (verifier prompts)."""

    def encode(messages):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    return encode


@dataclass(frozen=True)
class PromptRecord:
    """One prompt of a request: its token ids, the text a reward sees as the question
    (the prompt, or a chat's last user message) and its completion budget (max_tokens)."""

    ids: list[int]
    text: str
    max_tokens: int


def build_program(
    body, config, prompts: list[PromptRecord], logprobs, encode_chat=None, adapters=None, load=0
):
    """The program for a request body and its prompts, and the method name for metrics.

    logprobs: per-token logprobs to return (None: none); encode_chat(messages) -> token ids
    renders verifier prompts for the self reward; adapters: the engine's SLR loop adapters
    by name; load: requests in the engine now (adaptive budgets, server/budgets.py).
    """
    spec = body.latent
    if spec is None or spec.method == "none":
        deadline = _deadline(config)
        needs = [
            Generate(
                p.ids,
                sampling_params(body, p.max_tokens, logprobs, j, deadline),
                stream_index=i * body.n + j if body.stream else None,
            )
            for i, p in enumerate(prompts)
            for j in range(body.n)
        ]
        return plain_generation(needs), "none"
    [prompt] = prompts if len(prompts) == 1 else [None]
    if spec.samples is not None and spec.method not in SAMPLED_METHODS:
        raise APIError(
            400,
            f"latent.samples applies to {', '.join(SAMPLED_METHODS)}, not {spec.method}",
            param="latent.samples",
        )
    if spec.min_samples is not None and spec.method not in SAMPLED_METHODS:
        raise APIError(
            400,
            f"latent.min_samples applies to {', '.join(SAMPLED_METHODS)}, not {spec.method}",
            param="latent.min_samples",
        )
    if prompt is None or body.n != 1:
        raise APIError(400, "latent refinement takes a single prompt and n = 1", param="latent")
    budget = budget_for(
        config.refinement_policy, load, config.refinement_load_target or config.max_batch_size
    )
    if spec.method in SAMPLING_METHODS:
        program = sampling_program(body, spec, config, prompt, encode_chat, budget)
        return program, spec.method
    if spec.method in ("slr", "contrastive"):
        params = sampling_params(body, prompt.max_tokens, None, deadline=_deadline(config))
        cfg = slr_config(spec, config, adapters or {})
        cfg.report_progress = body.stream
        return finishing(slr(prompt.ids, params, cfg), None, spec), spec.method
    if spec.reward is None:
        raise APIError(400, f"{spec.method} needs a reward", param="latent.reward")
    cfg = latentseek_config(spec, config)
    cfg.report_progress = body.stream
    asked = {"max_steps": cfg.max_steps, "speculative_steps": cfg.speculative_steps}
    cfg.max_steps = budget.steps(cfg.max_steps, spec.min_steps or 0)
    cfg.speculative_steps = budget.steps(cfg.speculative_steps, 1)
    granted = {"max_steps": cfg.max_steps, "speculative_steps": cfg.speculative_steps}
    if spec.method == "latentseek_best_of_n":
        samples = sample_count(body, spec, config)
        asked["samples"], granted["samples"] = (
            samples,
            budget.samples(samples, spec.min_samples or 1),
        )
        params = sampling_params(body, prompt.max_tokens, None, deadline=_deadline(config))
        reward = make_reward(spec.reward, config, encode_chat, prompt, params)
        program = latentseek_best_of_n(
            prompt.ids, prompt.text, params, cfg, granted["samples"], reward, report=body.stream
        )
    else:
        params = sampling_params(body, prompt.max_tokens, None)
        reward = make_reward(spec.reward, config, encode_chat, prompt, params)
        program = latentseek(prompt.ids, prompt.text, params, cfg, reward)
    return finishing(program, reported(budget, asked, granted), spec), spec.method


def finishing(program, budget: dict | None, spec):
    """`program`, its output carrying the budget it was granted (`latent.budget`) and, with
    `latent.return_baseline`, its first answer (`latent.baseline`)."""
    out = yield from program
    out.budget = budget
    out.return_baseline = spec.return_baseline
    return out


def _deadline(config) -> float | None:
    timeout = config.request_timeout
    return None if timeout is None else time.monotonic() + timeout


def latentseek_config(spec, config) -> LatentSeekConfig:
    given = {
        f.name: getattr(spec, f.name)
        for f in fields(LatentSeekConfig)
        if getattr(spec, f.name, None) is not None
    }
    cfg = LatentSeekConfig(**given, speculative_steps=config.speculative_steps)
    cfg.time_budget_ms = _time_budget(cfg.time_budget_ms, config)
    if cfg.max_steps > config.max_refinement_steps:
        raise APIError(
            400,
            f"latent.max_steps {cfg.max_steps} is over the server's maximum "
            f"{config.max_refinement_steps}",
            param="latent.max_steps",
        )
    return cfg


def _time_budget(budget_ms: float | None, config) -> float | None:
    """The request's refinement budget, capped by --request-timeout; 400 over the maximum."""
    if config.request_timeout is not None:  # the server-wide deadline caps the budget
        budget_ms = min(
            budget_ms if budget_ms is not None else math.inf, config.request_timeout * 1000
        )
    if budget_ms is not None and budget_ms > config.max_time_budget_ms:
        raise APIError(
            400,
            f"latent.time_budget_ms {budget_ms:g} is over the server's maximum "
            f"{config.max_time_budget_ms:g}",
            param="latent.time_budget_ms",
        )
    return budget_ms


def slr_config(spec, config, adapters: dict) -> SLRConfig:
    """SLRConfig from the request; a named adapter's training settings are the defaults."""
    given = {}
    if spec.adapter is not None:
        if spec.adapter not in adapters:
            loaded = ", ".join(sorted(adapters)) or "none"
            raise APIError(
                400,
                f"latent.adapter {spec.adapter!r} is not loaded on this server (loaded: {loaded})",
                param="latent.adapter",
            )
        given = adapters[spec.adapter].slr_defaults(spec.adapter)
    for name in SLR_REQUEST_FIELDS:
        if getattr(spec, name) is not None:
            given[name] = getattr(spec, name)
    if spec.method == "contrastive":
        if spec.adapter is None:  # strong = with the loop adapters, weak = without
            raise APIError(
                400, "contrastive refinement needs latent.adapter", param="latent.adapter"
            )
        given["contrastive"] = True
        if spec.layout == "recurrent":
            raise APIError(
                400, "contrastive refinement runs on the thoughts layout", param="latent.layout"
            )
    cfg = SLRConfig(
        **given,
        time_budget_ms=_time_budget(spec.time_budget_ms, config),
        return_trace=spec.return_trace,
    )
    if spec.exit is not None:
        cfg.exit_criterion, cfg.exit_threshold = spec.exit.criterion, spec.exit.threshold
    if cfg.max_loops > config.max_loops:
        raise APIError(
            400,
            f"latent.max_loops {cfg.max_loops} is over the server's maximum {config.max_loops}",
            param="latent.max_loops",
        )
    return cfg


def sample_count(body, spec, config) -> int:
    """`latent.samples` (default DEFAULT_SAMPLES), at most --max-samples; refused (400) at
    temperature 0, where every draw would be the same greedy answer."""
    samples = spec.samples if spec.samples is not None else DEFAULT_SAMPLES
    _check_samples(samples, config, "latent.samples")
    if body.temperature < 1e-5:
        raise APIError(
            400,
            f"{spec.method} samples at the request's temperature; at 0 every sample is the "
            "same greedy answer: set temperature > 0",
            param="temperature",
        )
    return samples


def sampling_program(body, spec, config, prompt: PromptRecord, encode_chat, budget: Budget):
    """best_of_n or self_consistency: `samples` draws (as the budget grants) at the
    request's own temperature, top_p and seed."""
    asked = sample_count(body, spec, config)
    samples = budget.samples(asked, spec.min_samples or 1)
    report = reported(budget, {"samples": asked}, {"samples": samples})
    params = sampling_params(body, prompt.max_tokens, None, deadline=_deadline(config))
    if spec.method == "self_consistency":
        if spec.reward is not None:
            raise APIError(400, "self_consistency takes no reward", param="latent.reward")
        program = self_consistency(prompt.ids, params, samples, report=body.stream)
        return finishing(program, report, spec)
    if spec.reward is None:
        raise APIError(400, "best_of_n needs a reward", param="latent.reward")
    reward = make_reward(spec.reward, config, encode_chat, prompt, params)
    program = best_of_n(prompt.ids, prompt.text, params, samples, reward, report=body.stream)
    return finishing(program, report, spec)


def _check_samples(samples: int, config, param: str) -> None:
    if samples > config.max_samples:
        raise APIError(
            400,
            f"{param} {samples} is over the server's maximum {config.max_samples} (--max-samples)",
            param=param,
        )


def make_reward(spec, config, encode_chat, prompt: PromptRecord, params: SamplingParams):
    """The reward object for a request's reward spec; `prompt` and `params` are what a
    consistency reward samples from."""
    if spec.type == "arithmetic":
        from latent_ops.arithmetic import ArithmeticReward

        return ArithmeticReward()
    if spec.type == "consistency":
        samples = spec.samples if spec.samples is not None else DEFAULT_SAMPLES
        _check_samples(samples, config, "latent.reward.samples")
        return ConsistencyReward(prompt.ids, params, samples, spec.temperature)
    if spec.type == "reference":
        return ReferenceReward(spec.reference_answer)
    if spec.type == "self":
        return SelfReward(encode_chat, config.verifier_max_tokens, spec.format)
    if spec.type == "webhook":
        url = allowed_url(spec.url, config.reward_url_allowlist)
        if url is None:
            raise APIError(
                400,
                "latent.reward.url is not on the server's --reward-url-allowlist (compared "
                "normalised, path on segment boundaries; no userinfo, query, escapes)",
                param="latent.reward.url",
            )
        return WebhookReward(url, config.reward_timeout_s)  # the very string checked
    try:
        return RegexReward(spec.pattern)
    except ValueError as exc:
        raise APIError(400, f"latent.reward.pattern: {exc}", param="latent.reward.pattern") from exc
