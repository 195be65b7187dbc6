"""Requests as step-wise programs: the needs they yield and the results they receive.

A refinement method (and plain generation, the one-step case) is written as a generator
that yields a list of *needs* and is sent back the list of *results*, one per need, in
the same order. The engine in `server/engine/` gathers the needs of all active requests
each step and runs each kind as one batch (all `Generate` needs share the runner's
continuous batch), so concurrent requests share the model's passes. The generator's
return value is the request's output.

This module holds plain dataclasses only: no model, no HTTP, no scheduler. The same
programs run under the HTTP server and the in-process evaluation tool.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class SamplingParams:
    """How one sequence is decoded. Token counts exclude the prompt."""

    max_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None  # per-sequence generator; None draws a fresh seed
    stop: list[str] = field(default_factory=list)  # stop strings, not included in the text
    stop_token_ids: list[int] = field(default_factory=list)  # in addition to EOS
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's plus top-k
    capture_latents: bool = False  # keep the final-norm state that produced each token
    deadline: float | None = None  # time.monotonic(); decoding stops there ("deadline")

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5  # as vLLM: tinier temperatures overflow the softmax


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, logprob), best first; len = requested k


@dataclass
class Generate:
    """Need: decode a continuation of `prompt_ids`.

    `stream_index`, when set, streams text deltas to the client as choice number
    `stream_index` while the sequence decodes (plain generation); refinement methods
    leave it unset and stream their final answer themselves.
    """

    prompt_ids: list[int]
    params: SamplingParams
    stream_index: int | None = None
    # Tokens that count as already generated (LatentSeek's optimised prefix): they are
    # prefilled after the prompt, count toward max_tokens, and lead the result's tokens
    # and text. A prefix that holds a stop token, or fills max_tokens, decodes nothing.
    prefix_ids: list[int] = field(default_factory=list)
    # Keep the prompt's KV cache for later needs of the same request whose prompt starts
    # with these `prompt_ids` (LatentSeek's iterations): they prefill only what follows.
    cache_prompt: bool = False
    # SLR: run latent thought loops after the prompt before decoding (latent_ops.slr.Thoughts)
    thoughts: Any = None
    # Token lists the continuation may repeat (LatentSeek: the answers the request already
    # decoded, most recent first). The runner may verify them as drafts; the result is
    # what decoding without them gives (server/engine/drafts.py).
    draft_ids: list[list[int]] = field(default_factory=list)


@dataclass
class Generation:
    """Result of a `Generate` need.

    token_ids include a stop token when one ended the sequence (it is not in `text`).
    latents: [len(token_ids), d] float32 on the model's device when `capture_latents` was
    set (the vLLM backend recovers them on the CPU): row t is
    the last-layer state after the final norm at the position that produced token_ids[t].
    """

    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" | "length" | "abort" | "deadline"
    prompt_tokens: int
    latents: Any = None
    logprobs: list[TokenLogprob] | None = None
    thoughts: dict | None = None  # SLR: the loops' summary (latent_ops.slr.ThoughtState)


@dataclass
class Call:
    """Need: run `fn()` off the engine's loop (I/O such as a reward webhook).

    An `async def` fn (or a partial of one) runs on the engine's I/O event loop and is
    cancelled if its request ends first (client gone, deadline); any other fn runs on a
    thread pool. The result is fn's return value, or the exception it raised (returned,
    not raised, so the program decides what a failure means). Other requests keep
    decoding meanwhile.
    """

    fn: Any


@dataclass
class LatentUpdate:
    """Need: one Adam step on the rows of `z` under `reward`; result: argmax tokens [U].

    z, exp_avg, exp_avg_sq: [U, d] float32, owned by the program, updated in place. When
    the step would leave a row non-finite, nothing is updated and the result is a
    FloatingPointError (the program stops with `reward_error`; no other request is hurt).
    """

    z: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    reward: float
    lr: float
    step: int


@dataclass
class Report:
    """Need: tell the client how refinement is going (a streamed progress event: step or
    sample, reward, tokens so far); answered at once with None."""

    info: dict


# What a program may ask for. The engine answers a Generate with a Generation, a Call with
# fn's outcome, a LatentUpdate with a token tensor [U] (or a FloatingPointError) and a
# Report with None.
Need = Generate | Call | LatentUpdate | Report


class Output(Protocol):
    """What every program returns: plain generation (`Choices`) and refinement
    (`latent_ops.latentseek.Refined`) alike, so the engine, the routes and eval read one
    shape."""

    refinement_tokens: int  # tokens generated beyond the returned choices

    @property
    def choices(self) -> list[Generation]: ...

    def summary(self) -> dict | None:
        """The response's `latent` object; None for plain generation."""
        ...


class Choices(list):
    """Plain generation's output: the generations themselves (a list, one per prompt ×
    choice) with the `Output` interface."""

    refinement_tokens = 0

    @property
    def choices(self) -> list[Generation]:
        return list(self)

    def summary(self) -> None:
        return None


# yields list[Need], is sent one result per need, returns an Output
Program = Generator[list[Need], list[Any], Output]


def plain_generation(needs: list[Generate]) -> Program:
    """The one-step program: decode every need (e.g. the n choices × prompts) at once."""
    results = yield needs
    return Choices(results)
