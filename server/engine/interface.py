"""What the engine shares with its callers and asks of its runner: types only.

- Events a request's *sink* receives, on the engine thread: `Delta(index, text,
  token_ids, logprobs)` while plain generation streams, then exactly one of `Done(output)`
  or `Failed(error)`.
- `RequestStats`: what happened to one request (times, token counts, outcome), handed to
  the engine's `on_finish` callback for metrics and logs.
- The errors a caller sees: `QueueFull` and `EngineDead` from `Engine.submit`, and
  `CancelledError` in the `Failed` of a cancelled request.
- `Runner`: the part of `ModelRunner` (server/engine/runner.py) and `VLLMRunner`
  (server/engine/vllm_runner.py) that the engine drives.

No engine behaviour lives here (no threads, no engine state; torch only for types); the
one method, `RequestStats.record_output`, reads counts off a finished program's output.
The engine itself is server/engine/engine.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from server.engine.sequence import Sequence


class QueueFull(RuntimeError):
    """More requests wait than `max_queued_requests` allows."""


class EngineDead(RuntimeError):
    """The engine thread is not running."""


class CancelledError(RuntimeError):
    """The client went away; the request's work was stopped."""


@dataclass
class Delta:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list | None = None


@dataclass
class Progress:
    """A refinement's progress report (a program's `Report`, or an SLR loop)."""

    info: dict


@dataclass
class Done:
    output: Any


@dataclass
class Failed:
    error: BaseException


@dataclass
class RequestStats:
    """What happened to one request, for metrics and logs. Times are time.monotonic()."""

    request_id: str  # the engine's id (unique per submission)
    method: str = "none"
    trace_id: str | None = None  # the HTTP request id (x-request-id), for logs
    arrival: float = 0.0
    scheduled: float | None = None  # first sequence admitted to the batch
    first_token: float | None = None
    finished: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    refinement_tokens: int = 0
    refinement: dict | None = None  # the `latent` summary of a refined request
    trace: Any = None  # its latent_ops.telemetry.Trace (norms, cosine_drift, distance)
    outcome: str = "pending"  # "stop" | "length" | "abort" | "cancelled" | "error"
    # work done for this request (usage.refinement, metrics): runner steps its sequences
    # took part in, tokens its sequences generated, latent rows it updated, and seconds in
    # its latent updates (each batched call counted whole for every request in it) and in
    # its Calls (reward webhooks)
    forward_passes: int = 0
    generated_tokens: int = 0
    latent_update_rows: int = 0
    latent_update_s: float = 0.0
    call_s: float = 0.0

    def phase_seconds(self) -> dict[str, float]:
        """Wall time per phase: queue (until the first sequence got a slot), latent_update,
        reward (Calls), decode (the rest: decoding, prefill, programs), total."""
        end = self.finished if self.finished is not None else time.monotonic()
        total = end - self.arrival
        queue = (self.scheduled - self.arrival) if self.scheduled is not None else total
        rest = max(0.0, total - queue - self.latent_update_s - self.call_s)
        return {
            "queue": queue,
            "decode": rest,
            "latent_update": self.latent_update_s,
            "reward": self.call_s,
            "total": total,
        }

    def record_output(self, output) -> None:
        """Token counts and outcome from a program's output (plain list or a `Refined`)."""
        from latent_ops.program import Generation

        gens = output if isinstance(output, list) else [getattr(output, "generation", None)]
        gens = [g for g in gens if isinstance(g, Generation)]
        self.completion_tokens = sum(len(g.token_ids) for g in gens)
        if gens:
            self.outcome = gens[0].finish_reason
        if hasattr(output, "summary"):
            self.refinement = output.summary()
            self.trace = getattr(output, "trace", None)
            self.refinement_tokens = output.refinement_tokens


class Runner(Protocol):
    """What the engine uses of a model runner. One caller (the engine thread).

    A sequence goes in with `add`, leaves the batch when it finishes (EOS, a stop token,
    its length, or `finish`/`abort` from the engine), and is returned by the `step` in
    which that happened. `complete` is called with every finished sequence once the
    engine has seen it finish, however it ended.
    """

    @property
    def eos_token_ids(self) -> set[int]: ...

    @property
    def max_model_len(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def lm_head(self) -> torch.nn.Module:
        """The output projection; latent updates read its `.weight` ([V, d])."""
        ...

    @property
    def lora(self) -> Any:
        """The latent_ops.lora.LoRABank of SLR loop adapters, or None."""
        ...

    @property
    def healthy(self) -> bool:
        """Whether it can still decode (/health answers 503 otherwise)."""
        ...

    @property
    def running(self) -> list[Sequence]:
        """Sequences in the decode batch (or looping), not yet finished."""
        ...

    @property
    def waiting(self) -> list[Sequence]:
        """Sequences added but not admitted to the batch."""
        ...

    @property
    def has_work(self) -> bool: ...

    def add(self, seq: Sequence) -> None: ...

    def abort(self, seq: Sequence) -> None: ...

    def finish(self, seq: Sequence, reason: str = "stop") -> None: ...

    def complete(self, seqs: list[Sequence]) -> None: ...

    def step(self) -> list[Sequence]:
        """One decode pass and admissions; the sequences that got a token or finished."""
        ...

    def release(self, cache_key) -> None:
        """Drop the prefix cache kept under cache_key (a request id)."""
        ...

    def reset(self) -> None:
        """After a failed step: drop the batch (its sequences), keep the waiting ones."""
        ...

    def shutdown(self) -> None: ...
