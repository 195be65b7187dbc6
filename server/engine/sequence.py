"""`Sequence`: one sequence as the runners see it (prompt ids in; output ids, latents,
logprobs and the finish reason out), plus the engine's scheduling and SLR fields.

A plain record: no decoding (server/engine/runner.py, server/engine/vllm_runner.py) and
no text (server/engine/detokenizer.py). `server.engine.runner.Sequence` is this class.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from latent_ops.program import SamplingParams, TokenLogprob
from latent_ops.slr import ThoughtState


@dataclass
class Sequence:
    """Runner-side state of one sequence. `prompt_ids` is what goes in; outputs grow."""

    seq_id: int
    prompt_ids: list[int]
    params: SamplingParams
    output_ids: list[int] = field(default_factory=list)
    # each [d] float32 on the model's device: captured without a host copy, stacked once
    # when the sequence finishes (latents_tensor)
    latents: list[torch.Tensor] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    generator: torch.Generator | None = None
    # Prefix cache: after prefill, the KV of prompt_ids[:cache_len] is kept under
    # cache_key (until `release(cache_key)`); a later sequence with the same key whose
    # prompt starts with those tokens prefills only the rest.
    cache_key: object = None
    cache_len: int = 0
    # Admission order: lower first, ties in arrival order. The engine passes its request's
    # arrival time, so a refinement's next continuation goes ahead of newer requests
    # (first come, first served by request, as vLLM schedules).
    priority: float = 0.0
    # SLR thought loops (latent_ops.slr): the config from the need, then the loops' state.
    # While thinking, each pass feeds `pending_input` ([d]) instead of a token.
    thoughts: object = None
    thought_state: ThoughtState | None = None
    pending_input: torch.Tensor | None = None
    # Draft-verified decoding (server/engine/drafts.py): token lists the output may repeat
    # (earlier answers of the same request), and their n-gram index once built
    draft_sources: list[list[int]] = field(default_factory=list)
    draft_index: object = None
    vllm_id: str | None = None  # its request id in vLLM, when the vllm backend decodes it
    error: str | None = None  # set by a runner that failed this sequence alone (vllm backend)

    @property
    def loops(self) -> int:
        return self.thought_state.loops if self.thought_state is not None else 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def latents_tensor(self) -> torch.Tensor | None:
        """[len(output_ids), d] float32 on the model's device (one gather for the whole
        sequence), or None when latents were not captured."""
        if not self.params.capture_latents:
            return None
        return torch.stack(self.latents) if self.latents else torch.empty(0)


def sequence_for(need, seq_id: int, eos: set[int]) -> tuple[Sequence, list[int]]:
    """The runner sequence for a `Generate` need, and the forced prefix leading its output.

    The prefix is prefilled after the prompt and counts toward max_tokens. A prefix that
    holds a stop token (cut after it) or fills max_tokens leaves nothing to decode: the
    sequence comes back already finished (seq_id -1, never given to a runner)."""
    params, prefix = need.params, list(need.prefix_ids)
    stops = (eos if not params.ignore_eos else set()) | set(params.stop_token_ids)
    cut = next((i for i, t in enumerate(prefix) if t in stops), None)
    if cut is not None or len(prefix) >= params.max_tokens:
        reason = "stop" if cut is not None else "length"
        prefix = prefix[: cut + 1] if cut is not None else prefix[: params.max_tokens]
        return Sequence(-1, list(need.prompt_ids), params, finish_reason=reason), prefix
    seq = Sequence(
        seq_id,
        list(need.prompt_ids) + prefix,
        replace(params, max_tokens=params.max_tokens - len(prefix)),
    )
    seq.thoughts = need.thoughts
    seq.draft_sources = need.draft_ids
    return seq, prefix
