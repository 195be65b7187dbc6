"""The SLR `recurrent` layout (latent_ops/slr.py), run a bounded chunk at a time.

A recurrent sequence reruns its whole prompt once per loop: pass 0 is the plain prompt;
loop t's pass runs the prompt's positions on loop_input(states of pass t-1) per position,
with loop t's LoRA, in a fresh cache; the answer is decoded from the last pass's cache.
A long prompt with many loops is a lot of work, so `RecurrentJob` keeps one such
sequence between runner steps and runs at most `chunk` positions of one pass per call:
a chunked prefill into the pass's cache (positions [a, b) with explicit position ids and
an attention mask of width b, appended to the same `DynamicCache`). The runner gives each
step at most one chunk, round-robin over its looping sequences, beside its decode batch,
so other requests keep decoding.

Memory: the inputs of pass t at [a, b) are made when that chunk runs, from pass t-1's
states there (LM head, log-softmax and `loop_input`, all row-wise, on those rows only):
no [S, V] tensor exists, and a pass that ends the loops makes no inputs it would not use.
Besides the pass's KV cache a job holds one [S, d] buffer of states (positions before the
chunk are this pass's, the rest still the previous pass's) and, for residual `prev` only,
one [S, d] buffer of inputs. Loop count, loop deltas and exit criteria are unchanged: when
a pass completes, `ThoughtState.observe` reads its last position.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from latent_ops.slr import loop_input

if TYPE_CHECKING:
    from server.engine.runner import ModelRunner
    from server.engine.sequence import Sequence


class RecurrentJob:
    """One looping `recurrent` sequence: its passes so far and the pass under way."""

    def __init__(self, runner: ModelRunner, seq: Sequence, chunk: int):
        self.runner, self.seq, self.chunk = runner, seq, max(1, chunk)
        self.ids = torch.tensor([seq.prompt_ids], device=runner.device)  # [1, S]
        self.state = runner.thoughts.state(seq)
        self.loop = 0  # the pass under way: 0 = the plain prompt, t = loop t
        self.pos = 0  # its next position
        self.cache = DynamicCache(config=runner.config)  # the pass's KV, [0, pos)
        self.states: torch.Tensor | None = None  # [S, d], model dtype
        self.inputs: torch.Tensor | None = None  # [S, d] float32: x_t (residual "prev")
        self.done = False  # the loops have ended; `cache` holds the last pass

    @property
    def size(self) -> int:
        return self.ids.shape[1]

    def run_chunk(self) -> bool:
        """Run the next at most `chunk` positions of the pass under way; True when that
        ended the loops (then `last_state()` gives the first token)."""
        runner, state, cfg = self.runner, self.state, self.seq.thoughts.cfg
        a, b = self.pos, min(self.pos + self.chunk, self.size)
        ids = self.ids[:, a:b]
        embeds = slots = None
        if self.loop > 0:
            x = self._loop_input(a, b)
            embeds = x[None].to(runner.embed.weight.dtype)
            if cfg.adapter is not None:
                slots = torch.tensor([runner.lora.slot(cfg.adapter, self.loop)])
        mask = torch.ones((1, b), dtype=torch.long, device=runner.device)
        positions = torch.arange(a, b, device=runner.device)[None]
        with runner.thoughts.lora_rows(slots):
            out = runner._forward(ids, mask, positions, self.cache, embeds)[0]  # [b - a, d]
        runner.prefill_tokens += b - a
        if self.states is None:
            self.states = out.new_empty((self.size, out.shape[-1]))
        self.states[a:b] = out
        self.pos = b
        if b < self.size:
            return False
        last = self.last_state()[0]  # a copy: the buffer is overwritten by the next pass
        logits = runner.lm_head(last[None]).float()[0]
        if state.observe(last.float(), logits, time.monotonic()):
            self.done = True
            return True
        self.loop, self.pos = self.loop + 1, 0
        self.cache = DynamicCache(config=runner.config)
        return False

    def last_state(self) -> torch.Tensor:
        """[1, d] the state of the last position of the last completed pass."""
        return self.states[-1:].clone()

    def _loop_input(self, a: int, b: int) -> torch.Tensor:
        """x_t at positions [a, b) ([b - a, d] float32) from pass t-1's states there."""
        runner, state, cfg = self.runner, self.state, self.seq.thoughts.cfg
        prev = self.states[a:b]
        logprobs = None
        if cfg.feedback in ("soft", "hybrid"):  # only these read every position's logits
            logprobs = torch.log_softmax(runner.lm_head(prev).float(), dim=-1)
        x = loop_input(
            cfg,
            self.loop,
            prev.float(),
            logprobs,
            runner.embed(self.ids[0, a:b]).float(),  # h_0 at these positions
            self.inputs[a:b] if self.loop > 1 and self.inputs is not None else None,
            runner.embed.weight,
            state.embed_norm,
            state.adapter,
        )
        if cfg.residual == "prev":  # loop t+1 adds x_t
            if self.inputs is None:
                self.inputs = x.new_empty((self.size, x.shape[-1]))
            self.inputs[a:b] = x
        return x
