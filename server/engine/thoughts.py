"""SLR thought passes inside the torch runner's batch (latent_ops/slr.py, ALGORITHMS.md §2-3).

`ThoughtPasses` is the runner's one hook for SLR: the runner calls it at three points and
otherwise knows nothing of loops.
- `decode_inputs(ids, batch)`: before a decode pass, the input embeddings of rows that
  think (their `pending_input` instead of a token) and the LoRA slot of each such row's
  loop adapter;
- `contrast(rows, embeds, hidden)`: after it, contrastive refinement of those rows that
  ask for it (a second, base-model pass over a copy of their cache);
- `think(latent, logits, seqs)`: at sampling, each thinking row's state observed and its
  next thought input set; those rows get no token.
Also `state(seq)` (a sequence's `ThoughtState`, made on first use), `lora_rows(slots)`
(the per-row LoRA context) and `is_recurrent(seq)` (the `recurrent` layout runs in
server/engine/recurrent.py instead of the batch).

It owns no sequences, caches or batch state; the loop maths (feedback, exit criteria,
contrastive accumulation) is latent_ops.slr's.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from latent_ops.slr import ThoughtState

if TYPE_CHECKING:
    from server.engine.runner import ModelRunner
    from server.engine.sequence import Sequence


class ThoughtPasses:
    """SLR thoughts for one `ModelRunner` (its embeddings, LoRA bank, batch cache)."""

    def __init__(self, runner: ModelRunner):
        self.runner = runner
        self._embed_norm: float | None = None  # mean token-embedding norm (SLR feedback)

    def decode_inputs(self, ids: torch.Tensor, batch: list[Sequence]):
        """(embeds [B, 1, d] or None, LoRA slots [B] or None, thinking rows) for a decode
        pass over `ids` [B, 1]; consumes each thinking row's `pending_input`."""
        embeds = slots = None
        thinking = [r for r, s in enumerate(batch) if s.pending_input is not None]
        if thinking:  # SLR thought rows feed a vector instead of a token
            embeds = self.runner.embed(ids)  # [B, 1, d]
            for row in thinking:
                seq = batch[row]
                embeds[row, 0] = seq.pending_input.to(embeds.dtype)
                seq.pending_input = None
                name = seq.thoughts.cfg.adapter
                if name is not None:  # loop t runs with the adapter's LoRA of loop t
                    if slots is None:
                        slots = torch.full((len(batch),), -1, dtype=torch.long)
                    slots[row] = self.runner.lora.slot(name, seq.thought_state.loops + 1)
        return embeds, slots, thinking

    def lora_rows(self, slots: torch.Tensor | None):
        """The LoRA bank applying `slots` ([B]) to the passes inside; a no-op without."""
        if slots is None:
            return contextlib.nullcontext()
        return self.runner.lora.rows(slots.to(self.runner.device))

    def contrast(self, rows: list[int], embeds: torch.Tensor, hidden: torch.Tensor) -> None:
        """Contrastive refinement (ALGORITHMS.md §3) of the thought rows `rows`, in place.

        hidden[rows, -1] is h_strong (the loop's pass with its adapter); the same inputs
        (embeds [B, 1, d]) run again through the base model alone, over a copy of those
        rows' cache without the column the strong pass just wrote, giving h_weak; then
        g_t = γ g_{t-1} + (1-γ) η (h_strong - h_weak) and h_t = h_strong + g_t.
        """
        runner = self.runner
        index = torch.tensor(rows, device=runner.device)
        cache = DynamicCache(config=runner.config)
        for i, layer in enumerate(runner.cache.layers):
            cache.update(layer.keys[index, :, :-1], layer.values[index, :, :-1], i)
        weak = runner._forward(
            None, runner.mask[index], runner.next_pos[index, None], cache, embeds[index]
        )[:, -1]
        for k, row in enumerate(rows):
            state = runner.batch[row].thought_state
            strong = hidden[row, -1].float()
            state.accumulate(strong, weak[k].float())
            hidden[row, -1] = (strong + state.g).to(hidden.dtype)

    def think(self, latent: torch.Tensor, logits: torch.Tensor, seqs) -> set[int]:
        """SLR: record each thinking row's state (latent [B, d], logits [B, V]) and set
        its next thought input; returns the rows still thinking (they get no token)."""
        thinking = set()
        now = None
        for row, seq in enumerate(seqs):
            if seq.thoughts is None or seq.finished:
                continue
            state = self.state(seq)
            if state.stopped_reason is not None:
                continue
            now = now or time.monotonic()
            if not state.observe(latent[row].float(), logits[row], now):
                seq.pending_input = state.next_input(self.runner.embed.weight)
                thinking.add(row)
        return thinking

    def state(self, seq: Sequence) -> ThoughtState:
        """The sequence's loop state, made on first use."""
        if seq.thought_state is None:
            embed = self.runner.embed
            if self._embed_norm is None:
                self._embed_norm = float(embed.weight.float().norm(dim=-1).mean())
            name = seq.thoughts.cfg.adapter
            seq.thought_state = ThoughtState(
                seq.thoughts.cfg,
                embed.weight[seq.prompt_ids[-1]].float(),
                self._embed_norm,
                deadline=seq.thoughts.deadline,
                adapter=self.runner.lora.adapters[name] if name is not None else None,
            )
        return seq.thought_state


def is_recurrent(seq: Sequence) -> bool:
    """An SLR `recurrent`-layout sequence with loops to run (server/engine/recurrent.py)."""
    return (
        seq.thoughts is not None
        and seq.thoughts.cfg.layout == "recurrent"
        and seq.thoughts.cfg.max_loops > 0
    )
