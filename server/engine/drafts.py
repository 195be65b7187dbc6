"""Draft-verified decoding: drafts proposed by n-gram lookup, verified in one forward pass.

A greedy sequence often repeats tokens it can look up: a LatentSeek continuation after a
changed prefix usually re-joins the request's previous answer, and an answer often copies
the prompt's numbers and names. `Drafter.propose` looks the last n tokens of a sequence
(n from `n_max` down to `n_min`) up in its *sources* (the previous answers a `Generate`
need names in `draft_ids`, and the prompt when prompt lookup is on) and proposes the up to
k tokens that followed the latest match. The runner feeds the sequence's next token and
the drafts in one pass; `accepted` keeps the longest run of drafts equal to the model's own
greedy choice at each position (the verification of speculative decoding), so the tokens
emitted are the ones plain greedy decoding emits, one position at a time, and the state
at each accepted position is the one plain decoding would capture there. Up to floating
point: a pass over 1 + k positions sums in another order than k + 1 one-token passes, so
logits can differ in the last bits (as in vLLM); an argmax flips only on a near-tie.

`decode_drafted` is the runner's decode step when some row has a draft: the batch's KV
cache gets 1 + K columns, the columns of rejected drafts are masked (holes, as the prefix
cache's; position ids are explicit) and the trailing columns no row kept are cropped, so
the cache grows by what was accepted. Sampled sequences, SLR thought passes, logprobs and
stop strings are never drafted: their rows decode one token in the same pass. The vLLM
backend does not use this (vLLM has its own speculative decoding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class DraftStats:
    """Counters over the runner's life: steps that carried drafts, tokens proposed and
    accepted (acceptance = accepted / proposed)."""

    steps: int = 0
    proposed: int = 0
    accepted: int = 0

    def rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


@dataclass
class Sources:
    """n-gram index of a sequence's draft sources: ngram -> (source, end position) of its
    latest occurrence that has a token after it."""

    n_min: int
    n_max: int
    lists: list[list[int]]
    index: dict[tuple[int, ...], tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self):
        # earlier sources first, so the first-named (most recent) source wins a tie
        for s in reversed(range(len(self.lists))):
            src = self.lists[s]
            for n in range(self.n_min, self.n_max + 1):
                for end in range(n, len(src)):
                    self.index[tuple(src[end - n : end])] = (s, end)

    def after(self, context: list[int], k: int) -> list[int]:
        for n in range(self.n_max, self.n_min - 1, -1):
            if len(context) < n:
                continue
            hit = self.index.get(tuple(context[-n:]))
            if hit is not None:
                s, end = hit
                return self.lists[s][end : end + k]
        return []


class Drafter:
    """Proposes drafts for a runner's greedy rows; `k` tokens per sequence at most and
    `budget` drafted tokens per step over the whole batch (a large batch is already
    compute-bound, and every row pays for the widest draft)."""

    def __init__(self, k: int, budget: int, prompt_lookup: bool, n_min: int = 2, n_max: int = 4):
        self.k, self.budget, self.prompt_lookup = k, budget, prompt_lookup
        self.n_min, self.n_max = n_min, n_max
        self.stats = DraftStats()

    def eligible(self, seq) -> bool:
        p = seq.params
        return (
            self.k > 0
            and p.greedy
            and p.logprobs is None
            and not p.stop
            and seq.thoughts is None
            and (bool(seq.draft_sources) or self.prompt_lookup)
        )

    def propose(self, seqs, max_model_len: int) -> list[list[int]]:
        """A draft (possibly empty) per sequence, in batch order, within the budget; none
        reaches past max_tokens or the context length."""
        drafts, left = [], self.budget
        for seq in seqs:
            draft: list[int] = []
            if left > 0 and self.eligible(seq):
                if seq.draft_index is None:
                    lists = [list(s) for s in seq.draft_sources]
                    if self.prompt_lookup:
                        lists.append(list(seq.prompt_ids))
                    seq.draft_index = Sources(self.n_min, self.n_max, lists)
                room = min(
                    seq.params.max_tokens - len(seq.output_ids),
                    max_model_len - len(seq.prompt_ids) - len(seq.output_ids),
                )
                want = min(self.k, left, room - 1)
                if want > 0:
                    tail = seq.output_ids[-self.n_max :]
                    if len(tail) < self.n_max:
                        tail = seq.prompt_ids[len(tail) - self.n_max :] + tail
                    draft = seq.draft_index.after(tail, want)
            drafts.append(draft)
            left -= len(draft)
        return drafts


def accepted(choices: list[list[int]], drafts: list[list[int]]) -> list[int]:
    """choices: per row, the argmax at each fed position ([B][1 + K]; position 0 is the
    sequence's next token, position j its j-th draft). Per row, how many leading drafts
    equal the model's
    choice at the position before them."""
    counts = []
    for row, draft in enumerate(drafts):
        a = 0
        while a < len(draft) and draft[a] == choices[row][a]:
            a += 1
        counts.append(a)
    return counts


def decode_drafted(runner, drafts: list[list[int]]) -> None:
    """The runner's decode step with drafts (module docstring): one pass over each row's
    next token and its draft; rows keep the drafts the model's greedy choices confirm."""
    width = 1 + max(len(d) for d in drafts)
    tail = torch.full((len(runner.batch), width - 1), runner.pad_token_id, dtype=torch.long)
    new = torch.zeros((len(runner.batch), width), dtype=torch.long)
    for row, draft in enumerate(drafts):
        tail[row, : len(draft)] = torch.tensor(draft, dtype=torch.long)
        new[row, : 1 + len(draft)] = 1
    ids = torch.cat([runner.next_tokens[:, None], tail.to(runner.device)], dim=1)
    new = new.to(runner.device)
    runner.mask = torch.cat([runner.mask, new], dim=1)
    positions = runner.next_pos[:, None] + torch.arange(width, device=runner.device)
    hidden = runner._forward(ids, runner.mask, positions, runner.cache)  # [B, width, d]
    logits = runner.lm_head(hidden).float()  # [B, width, V]
    greedy = logits.argmax(dim=-1)
    choices = greedy.tolist()  # one host copy per step
    counts = accepted(choices, drafts)
    tokens = runner._sample_and_append(hidden[:, 0], runner.batch, logits[:, 0])
    kept = []
    for row, seq in enumerate(runner.batch):
        extra = 0
        while extra < counts[row] and not seq.finished:
            extra += 1
            token = choices[row][extra]
            seq.output_ids.append(token)
            if seq.params.capture_latents:
                seq.latents.append(hidden[row, extra].float())
            runner._check_stop(seq, token)
        if extra:
            tokens[row] = choices[row][extra]
        kept.append(extra)
    stats = runner.drafter.stats
    stats.steps += 1
    stats.proposed += sum(len(d) for d in drafts)
    stats.accepted += sum(kept)
    keep = torch.tensor(kept, device=runner.device)
    cols = torch.arange(width, device=runner.device)
    runner.mask[:, -width:] *= (cols[None, :] <= keep[:, None]).long()
    drop = width - 1 - max(kept)  # trailing columns that are padding in every row
    if drop:
        runner.mask = runner.mask[:, :-drop]
        for layer in runner.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, :-drop], layer.values[:, :, :-drop]
    runner.next_pos = runner.next_pos + 1 + keep
    runner.next_tokens = tokens
