"""The batched, KV-cached model runner with continuous batching.

One `step()` does three things:
1. *decode*: one token for every sequence of the batch, as one forward pass over a
   left-padded batch that shares a single KV cache;
2. *prefill*: admit waiting sequences (up to `max_batch_size`), run their prompts as one
   left-padded pass, sample each one's first token and merge their cache rows into the
   batch;
3. *recurrent*: at most one bounded chunk of one looping SLR `recurrent` sequence's
   passes (server/engine/recurrent.py), round-robin; when its loops end it samples its
   first token and joins the batch. So a long looping prompt never holds the others.
Sequences join and leave between steps: leaving drops the row and trims columns that
became padding everywhere; joining left-pads whichever side is shorter. That costs a
copy of the cache only when the batch changes, never per token.

A *prefix cache* keeps the KV of a sequence's leading tokens under a key its owner
chooses (LatentSeek keeps its prompt's, so each iteration prefills only the optimised
prefix). A row that reuses one is laid out `[pad][cached tokens][pad][new tokens]`: the
attention mask carries the hole and position ids are explicit, so rows with and without
reuse share one prefill pass.

The runner calls the decoder stack (`model.get_decoder()`) and the LM head itself, so the
prompt's logits are never computed (only the last position's) and the state after the
final norm, the *latent* the LM head reads, is at hand for every generated token.

SLR thought passes (a vector fed instead of a token, loop LoRA, contrastive refinement)
are `ThoughtPasses`' (server/engine/thoughts.py), called at three points of a step; the
`Sequence` record is server/engine/sequence.py, row sampling server/engine/sampling.py.

It knows token ids and tensors only: text, stop strings, HTTP and programs live above it
(`server/engine/engine.py`, `server/engine/detokenizer.py`). Supported: decoder-only
models with full attention whose logits are `lm_head(final_norm(h))` (Llama, Qwen2,
Mistral without sliding window, ...).
"""

from __future__ import annotations

import bisect
import random

import torch
from transformers import DynamicCache

from kernels import skinny_linear
from server.engine.drafts import Drafter, decode_drafted
from server.engine.recurrent import RecurrentJob
from server.engine.sampling import sample_row, token_logprob
from server.engine.sequence import Sequence
from server.engine.thoughts import ThoughtPasses, is_recurrent


class ModelRunner:
    """Continuous-batching decoder over one model. Not thread-safe: one caller (the engine)."""

    def __init__(
        self,
        model,
        max_batch_size: int = 8,
        max_model_len: int | None = None,
        eos_token_ids: set[int] | None = None,
        pad_token_id: int = 0,
        recurrent_chunk: int = 512,  # most prompt positions of SLR recurrent work per step
        drafter: Drafter | None = None,  # draft-verified decoding (server/engine/drafts.py)
    ):
        self.model = model
        skinny_linear.install(model)  # batched decode steps on CPU: see kernels/skinny_linear.py
        self.decoder = model.get_decoder()
        self.lm_head = model.get_output_embeddings()
        self.config = model.config
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.max_model_len = max_model_len or getattr(
            model.config, "max_position_embeddings", 1 << 30
        )
        self.eos_token_ids = set(eos_token_ids or ())
        self.pad_token_id = pad_token_id
        self.recurrent_chunk = recurrent_chunk
        self.drafter = drafter
        self.waiting: list[Sequence] = []  # sorted by (priority, seq_id)
        self.batch: list[Sequence] = []  # the decode batch, one row each
        self.looping: list[RecurrentJob] = []  # admitted recurrent SLR rows, round-robin
        # Batch state, one row per batch sequence (None when the batch is empty):
        self.cache: DynamicCache | None = None  # layers of [B, kv_heads, Lb, head_dim]
        self.mask: torch.Tensor | None = None  # [B, Lb] long, 1 = real token
        self.next_pos: torch.Tensor | None = None  # [B] long, position id of the next input
        self.next_tokens: torch.Tensor | None = None  # [B] long, sampled, not yet in cache
        # cache_key -> (token ids, [(keys, values)] per layer, each [1, kv_heads, n, hd])
        self.prefix_cache: dict[object, tuple[list[int], list[tuple]]] = {}
        self.embed = model.get_input_embeddings()
        self.thoughts = ThoughtPasses(self)  # SLR thought passes (server/engine/thoughts.py)
        self.lora = None  # latent_ops.lora.LoRABank of SLR loop adapters, when any are loaded
        self.healthy = True  # can still decode (the engine's /health); the vllm backend may not
        self.forward_passes = 0
        self.prefill_tokens = 0  # prompt tokens actually run through the model
        self.reused_tokens = 0  # prompt tokens taken from the prefix cache instead

    # ---- queue -------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        if seq.params.seed is not None or not seq.params.greedy:
            seed = seq.params.seed if seq.params.seed is not None else random.getrandbits(62)
            seq.generator = torch.Generator(device=self.device).manual_seed(seed)
        bisect.insort(self.waiting, seq, key=lambda s: (s.priority, s.seq_id))

    def abort(self, seq: Sequence) -> None:
        """Stop a sequence; it leaves the batch at the start of the next step."""
        if seq.finish_reason is None:
            seq.finish_reason = "abort"
        if seq in self.waiting:
            self.waiting.remove(seq)

    def finish(self, seq: Sequence, reason: str = "stop") -> None:
        """End a sequence from above (e.g. a stop string matched)."""
        if seq.finish_reason is None:
            seq.finish_reason = reason

    def complete(self, seqs: list[Sequence]) -> None:
        """Called by the engine with the sequences that just finished, however they ended
        (here, a stop string or a deadline too): this runner has nothing to add."""

    def shutdown(self) -> None:
        """Nothing to stop here (the vllm backend stops its engine process)."""

    def release(self, cache_key) -> None:
        """Forget the prefix-cache entry kept under `cache_key` (if any)."""
        self.prefix_cache.pop(cache_key, None)

    def reset(self) -> None:
        """Drop the batch and the looping sequences (after a failed step); waiting
        sequences stay queued."""
        for seq in self.running:
            self.abort(seq)
        self.looping = []
        self._clear_batch()

    def _clear_batch(self) -> None:
        self.batch, self.cache = [], None
        self.mask = self.next_pos = self.next_tokens = None

    @property
    def running(self) -> list[Sequence]:
        """Every admitted sequence: the batch's rows, then the looping recurrent ones (the
        engine's deadlines and failure handling cover both)."""
        return [*self.batch, *(job.seq for job in self.looping)]

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.batch or self.looping)

    @torch.inference_mode()
    def final_states(self, rows: list[list[int]]) -> list[torch.Tensor]:
        """One left-padded pass over token rows, nothing cached or sampled.

        Returns per row a [len(row), d] float32 CPU tensor: the state after the final norm
        at each position (position j's state is what predicts token j + 1). The vLLM
        backend recovers a generation's latents this way (server/engine/vllm_runner.py).
        """
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.prefill_tokens += sum(len(r) for r in rows)
        hidden = self._forward(ids, mask, positions, DynamicCache(config=self.config))
        return [hidden[i, width - len(r) :].float().cpu() for i, r in enumerate(rows)]

    # ---- one engine step ---------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[Sequence]:
        """Decode one token for the batch, prefill admitted sequences, then run one chunk
        of recurrent work.

        Returns the sequences this step moved on: the batch's rows and the admitted ones
        (each got a token, unless it ran an SLR thought pass), and a looping sequence
        whose loops ended (with its first token). A `recurrent` sequence is returned
        without a token when admitted (so the engine marks it scheduled), then not again
        until its loops end. Finished sequences (however they ended, looping ones too)
        leave at the start of the next step.
        """
        self._evict_finished()
        self.looping = [job for job in self.looping if not job.seq.finished]
        stepped: list[Sequence] = []
        if self.batch:
            self._decode()
            stepped.extend(self.batch)
        free = self.max_batch_size - len(self.batch) - len(self.looping)
        if free > 0 and self.waiting:
            admitted, self.waiting = self.waiting[:free], self.waiting[free:]
            self._prefill(admitted)
            stepped.extend(admitted)
        if self.looping:
            job = self.looping.pop(0)
            if job.run_chunk():
                self._join(job)
                if not any(s is job.seq for s in stepped):
                    stepped.append(job.seq)
            else:
                self.looping.append(job)
        return stepped

    def _decode(self) -> None:
        if self.drafter is not None and all(s.thoughts is None for s in self.batch):
            drafts = self.drafter.propose(self.batch, self.max_model_len)
            if any(drafts):
                return decode_drafted(self, drafts)
        ids = self.next_tokens[:, None]  # [B, 1]
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.batch), 1)], dim=1)
        embeds, slots, thinking = self.thoughts.decode_inputs(ids, self.batch)
        with self.thoughts.lora_rows(slots):
            hidden = self._forward(ids, self.mask, self.next_pos[:, None], self.cache, embeds)
        contrast = [r for r in thinking if self.batch[r].thoughts.cfg.contrastive]
        if contrast:
            self.thoughts.contrast(contrast, embeds, hidden)
        self.next_pos = self.next_pos + 1
        self.next_tokens = self._sample_and_append(hidden[:, -1], self.batch)

    def _prefill(self, seqs: list[Sequence]) -> None:
        plain = []
        for seq in seqs:  # recurrent SLR rows loop their whole prompt, a chunk per step
            if is_recurrent(seq):
                self.looping.append(RecurrentJob(self, seq, self.recurrent_chunk))
            else:
                plain.append(seq)
        if not plain:
            return
        seqs = plain
        reuse = [self._lookup(s) for s in seqs]  # (n cached tokens, their KV or None)
        cached_w = max(n for n, _ in reuse)
        news = [s.prompt_ids[n:] for s, (n, _) in zip(seqs, reuse)]
        width = max(len(x) for x in news)
        ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), cached_w + width), dtype=torch.long)
        for row, ((n, _), new) in enumerate(zip(reuse, news)):
            ids[row, width - len(new) :] = torch.tensor(new)
            mask[row, cached_w - n : cached_w] = 1
            mask[row, cached_w + width - len(new) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, cached_w:]
        cache = DynamicCache(config=self.config)
        if cached_w:
            some = next(kv for _, kv in reuse if kv is not None)
            for layer in range(len(some)):
                keys, values = zip(*(_row_kv(kv, some, layer, cached_w) for _, kv in reuse))
                cache.update(torch.cat(keys), torch.cat(values), layer)
        self.prefill_tokens += sum(len(x) for x in news)
        self.reused_tokens += sum(n for n, _ in reuse)
        hidden = self._forward(ids, mask, positions, cache)  # [b, width, d]
        self._keep_prefixes(seqs, reuse, cache, mask)
        next_pos = torch.tensor([len(s.prompt_ids) for s in seqs], device=self.device)
        tokens = self._sample_and_append(hidden[:, -1], seqs)
        self._merge(seqs, cache, mask, next_pos, tokens)

    def _join(self, job: RecurrentJob) -> None:
        """A recurrent sequence whose loops ended: its first token, then into the batch
        with the last pass's cache."""
        n = job.size
        mask = torch.ones((1, n), dtype=torch.long, device=self.device)
        tokens = self._sample_and_append(job.last_state(), [job.seq])
        self._merge([job.seq], job.cache, mask, torch.tensor([n], device=self.device), tokens)

    def _lookup(self, seq: Sequence) -> tuple[int, list | None]:
        entry = self.prefix_cache.get(seq.cache_key) if seq.cache_key is not None else None
        if entry is None:
            return 0, None
        tokens, kv = entry
        # at least one new token must run, to give the next token's logits
        if len(tokens) < len(seq.prompt_ids) and seq.prompt_ids[: len(tokens)] == tokens:
            return len(tokens), kv
        return 0, None

    def _keep_prefixes(self, seqs, reuse, cache, mask) -> None:
        """Store the KV of each seq's first `cache_len` real tokens under its key."""
        for row, (seq, (n, _)) in enumerate(zip(seqs, reuse)):
            if seq.cache_key is None or seq.cache_len <= n:
                continue  # nothing asked for, or the entry it reused already covers it
            cols = mask[row].nonzero().squeeze(1)[: seq.cache_len]
            self.prefix_cache[seq.cache_key] = (
                list(seq.prompt_ids[: seq.cache_len]),
                [
                    (layer.keys[row : row + 1, :, cols], layer.values[row : row + 1, :, cols])
                    for layer in cache.layers
                ],
            )

    def _forward(self, ids, mask, positions, cache, embeds=None) -> torch.Tensor:
        """Decoder stack only: [B, S] ids (or embeds [B, S, d]) -> [B, S, d] states after
        the final norm."""
        self.forward_passes += 1
        out = self.decoder(
            input_ids=ids if embeds is None else None,
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        return out.last_hidden_state

    # ---- sampling ----------------------------------------------------------------
    def _sample_and_append(self, latent: torch.Tensor, seqs: list[Sequence], logits=None):
        """latent: [B, d] final-norm states (logits: their [B, V] LM-head output, when
        already computed); returns the sampled tokens [B] (long)."""
        if logits is None:
            logits = self.lm_head(latent).float()  # [B, V]
        tokens = logits.argmax(dim=-1)
        thinking = self.thoughts.think(latent, logits, seqs)
        for row, seq in enumerate(seqs):
            if not seq.params.greedy and row not in thinking:
                tokens[row] = sample_row(logits[row], seq.params, seq.generator)
        logprobs = None
        if any(s.params.logprobs is not None for s in seqs):
            logprobs = torch.log_softmax(logits, dim=-1)
        token_list = tokens.tolist()
        # captured latents stay on the model's device: no device-to-host copy per token
        latent_f = latent.float() if any(s.params.capture_latents for s in seqs) else None
        for row, seq in enumerate(seqs):
            if row in thinking:
                continue  # this pass was a thought: no token
            token = token_list[row]
            seq.output_ids.append(token)
            if seq.params.capture_latents:
                seq.latents.append(latent_f[row])
            if seq.params.logprobs is not None:
                seq.logprobs.append(token_logprob(logprobs[row], token, seq.params.logprobs))
            self._check_stop(seq, token)
        return tokens

    def _check_stop(self, seq: Sequence, token: int) -> None:
        if seq.finish_reason is not None:
            return
        if (token in self.eos_token_ids and not seq.params.ignore_eos) or (
            token in seq.params.stop_token_ids
        ):
            seq.finish_reason = "stop"
        elif len(seq.output_ids) >= seq.params.max_tokens:
            seq.finish_reason = "length"
        elif len(seq.prompt_ids) + len(seq.output_ids) + seq.loops >= self.max_model_len:
            seq.finish_reason = "length"

    # ---- batch bookkeeping ---------------------------------------------------------
    def _merge(self, seqs, cache, mask, next_pos, tokens) -> None:
        """Append prefilled rows (cache [b, H, Ln, hd], mask [b, Ln]) to the batch."""
        if not self.batch:
            self.cache, self.mask, self.next_pos, self.next_tokens = cache, mask, next_pos, tokens
            self.batch = list(seqs)
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_left_pad(old.keys, width, 2), _left_pad(new.keys, width, 2)])
            old.values = torch.cat(
                [_left_pad(old.values, width, 2), _left_pad(new.values, width, 2)]
            )
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(mask, width, 1)])
        self.next_pos = torch.cat([self.next_pos, next_pos])
        self.next_tokens = torch.cat([self.next_tokens, tokens])
        self.batch.extend(seqs)

    def _evict_finished(self) -> None:
        keep = [i for i, s in enumerate(self.batch) if not s.finished]
        if len(keep) == len(self.batch):
            return
        if not keep:
            self._clear_batch()
            return
        index = torch.tensor(keep, device=self.device)
        self.batch = [self.batch[i] for i in keep]
        self.mask = self.mask[index]
        # Columns that are padding in every remaining row are dropped.
        first = int((self.mask.sum(0) > 0).nonzero()[0])
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]
        self.next_pos = self.next_pos[index]
        self.next_tokens = self.next_tokens[index]


def _row_kv(kv, some, layer: int, width: int):
    """One row's cached (keys, values) for `layer` left-padded to `width` columns; zeros
    shaped like `some` for a row that reuses nothing."""
    if kv is None:
        shape = list(some[layer][0].shape)
        shape[2] = width
        zeros = some[layer][0].new_zeros(shape)
        return zeros, zeros
    keys, values = kv[layer]
    return _left_pad(keys, width, 2), _left_pad(values, width, 2)


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
