"""Sampling one row's token from its logits, and a token's logprob record.

Used by the torch runner (server/engine/runner.py) after its LM head; greedy decoding,
stop checks and the batch are the runner's, not this module's.
"""

from __future__ import annotations

import torch

from latent_ops.program import SamplingParams, TokenLogprob


def sample_row(logits: torch.Tensor, params: SamplingParams, generator) -> int:
    """logits: [V] float32. Temperature, then nucleus (top-p) filtering, then one draw."""
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= params.top_p
        drop[0] = False  # a top_p below fp32's smallest number compares as 0 (fuzzing found it)
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def token_logprob(logprobs: torch.Tensor, token: int, k: int) -> TokenLogprob:
    top = []
    if k > 0:
        values, ids = logprobs.topk(k)
        top = list(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token_id=token, logprob=float(logprobs[token]), top=top)
