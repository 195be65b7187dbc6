"""The `vllm` backend's runner: decoding through vLLM, latents through torch.

`VLLMRunner` has the interface the engine drives (`add`, `step`, `abort`, `finish`,
`release`, `reset`, `running`, `waiting`, `has_work`, ...), so programs, streaming,
stop strings, deadlines, cancellation, admission and metrics are the engine's, the same
code on both backends. Underneath it holds two things:

- a vLLM `LLMEngine` (its engine core runs in a child process) that decodes every
  sequence without SLR thoughts: plain completions, LatentSeek's first answer and its
  continuations (the optimised prefix is part of the prompt vLLM sees; its automatic
  prefix caching reuses the question's KV), and verifier prompts. One `step()` takes
  one batch of vLLM's outputs (its continuous batching schedules them).
- the torch `ModelRunner` over the same weights, which vLLM does not replace for what
  it cannot give: a sequence that asks for `capture_latents` gets its latents (the
  states after the final norm that produced each token) from one torch prefill pass
  over prompt and answer once it has finished, however it ended (`complete`, which the
  engine calls, since a stop string or a deadline ends a sequence outside `step`);
  sequences with SLR thoughts (vector inputs, loop LoRAs) run on the torch runner
  entirely; the LM head for latent updates is torch's.

A failure on one side (a vLLM step, a torch pass, a latent recovery, or vLLM finishing a
request with "error") fails that side's sequences only, through `Sequence.error`, which
the engine turns into their requests' errors.

So the weights are held twice (vLLM's copy and torch's): docs/VLLM.md measures it.
Token ids in and out only: vLLM's tokenizer is not started (`skip_tokenizer_init`), stop
strings stay with the engine, and EOS ids are passed to vLLM as stop token ids.
Creating it starts vLLM's engine-core process (spawned): the program that does so must
guard its entry point with `if __name__ == "__main__":`.
"""

from __future__ import annotations

import logging
import os
import random
from itertools import count

from latent_ops.program import TokenLogprob
from server.engine.runner import ModelRunner, Sequence

log = logging.getLogger("latentserve.vllm")

_FINISH = {"stop": "stop", "length": "length", "abort": "abort"}


def vllm_available() -> bool:
    """Whether the optional extra is installed (`pip install '.[vllm]'`)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


class VLLMRunner:
    def __init__(
        self,
        torch_runner: ModelRunner,
        model_dir: str,
        *,
        dtype: str = "float32",
        kv_cache_gib: int = 2,
    ):
        self.torch = torch_runner
        self.max_model_len = torch_runner.max_model_len
        self.eos_token_ids = torch_runner.eos_token_ids
        self.llm = _start_engine(
            model_dir,
            dtype=dtype,
            device=torch_runner.device,
            max_num_seqs=torch_runner.max_batch_size,
            max_model_len=self.max_model_len,
            kv_cache_gib=kv_cache_gib,
        )
        self._seqs: dict[str, Sequence] = {}  # our request id -> sequence vLLM decodes
        self._ids = count()
        self.vllm_steps = 0
        self.healthy = True  # False once vLLM's engine core has died: /health turns 503

    # ---- what the engine reads -----------------------------------------------------
    @property
    def lm_head(self):
        return self.torch.lm_head

    @property
    def device(self):
        return self.torch.device

    @property
    def lora(self):
        return self.torch.lora

    @lora.setter
    def lora(self, bank) -> None:
        self.torch.lora = bank

    @property
    def forward_passes(self) -> int:
        return self.torch.forward_passes + self.vllm_steps

    @property
    def running(self) -> list[Sequence]:
        return [*self._seqs.values(), *self.torch.running]

    @property
    def waiting(self) -> list[Sequence]:
        return self.torch.waiting  # vLLM queues its own; to the engine they all run

    @property
    def has_work(self) -> bool:
        return bool(self._seqs) or self.torch.has_work

    # ---- queue -----------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        if seq.thoughts is not None:
            self.torch.add(seq)
            return
        from vllm.inputs import TokensPrompt

        key = f"s{next(self._ids)}"
        prompt = TokensPrompt(prompt_token_ids=list(seq.prompt_ids))
        # vLLM's priority queue (lower first, then arrival) ordered by the request's
        # arrival, as the torch runner admits: a LatentSeek continuation or verifier prompt
        # goes ahead of newer requests
        priority = int(seq.priority * 1000)
        self.llm.add_request(key, prompt, self._params(seq), priority=priority)  # may refuse
        seq.vllm_id = key
        self._seqs[key] = seq

    def abort(self, seq: Sequence) -> None:
        if seq.vllm_id is None:
            self.torch.abort(seq)
        elif seq.finish_reason is None:
            seq.finish_reason = "abort"  # leaves vLLM at the start of the next step

    def finish(self, seq: Sequence, reason: str = "stop") -> None:
        if seq.finish_reason is None:
            seq.finish_reason = reason

    def release(self, cache_key) -> None:
        self.torch.release(cache_key)  # vLLM's prefix cache evicts by itself

    def reset(self) -> None:
        """After a failed step: every vLLM sequence and the torch batch are dropped."""
        for seq in self._seqs.values():
            if seq.finish_reason is None:
                seq.finish_reason = "abort"
        self._drop_finished()
        self.torch.reset()

    # ---- one engine step ---------------------------------------------------------------
    def step(self) -> list[Sequence]:
        """One batch of vLLM outputs, then one torch step when it has work.

        Returns the sequences that received tokens (some may now be finished). A failure
        on one side fails that side's sequences only (`Sequence.error`), never the other's.
        """
        self._drop_finished()
        stepped: list[Sequence] = []
        if self._seqs and self.llm.has_unfinished_requests():
            try:
                stepped.extend(self._vllm_step())
            except Exception as exc:  # noqa: BLE001 - its sequences fail, torch's go on
                from vllm.v1.engine.exceptions import EngineDeadError

                log.exception("vLLM step failed")
                if isinstance(exc, EngineDeadError):  # its process is gone for good
                    self.healthy = False
                victims = list(self._seqs.values())
                for seq in victims:
                    seq.error = f"vLLM step failed: {exc!r}"
                    seq.finish_reason = seq.finish_reason or "abort"
                self._drop_finished()
                stepped.extend(victims)
        if self.torch.has_work:
            queued = list(self.torch.waiting)
            try:
                stepped.extend(self.torch.step())
            except Exception as exc:  # noqa: BLE001 - the rows of the failed pass fail
                log.exception("torch step failed")
                victims = [s for s in [*self.torch.running, *queued] if s not in self.torch.waiting]
                self.torch.reset()
                for seq in victims:
                    seq.error = f"torch step failed: {exc!r}"
                stepped.extend(victims)
        return stepped

    def _vllm_step(self) -> list[Sequence]:
        self.vllm_steps += 1
        stepped = []
        for out in self.llm.step():
            seq = self._seqs.get(out.request_id)
            if seq is None or seq.finished:
                continue
            self._update(seq, out)
            stepped.append(seq)
        return stepped

    def complete(self, seqs: list[Sequence]) -> None:
        """Latents for finished `capture_latents` sequences that vLLM decoded, however they
        ended (vLLM, a stop string, a deadline), in one torch pass for all of them."""
        seqs = [
            s
            for s in seqs
            if s.vllm_id and s.params.capture_latents and s.output_ids and not s.latents
        ]
        if not seqs:
            return
        rows = [list(s.prompt_ids) + s.output_ids[:-1] for s in seqs]
        try:
            states = self.torch.final_states(rows)
        except Exception as exc:  # noqa: BLE001 - these sequences fail, nothing else
            log.exception("recovering latents failed")
            for seq in seqs:
                seq.error = f"recovering latents failed: {exc!r}"
            return
        for seq, rows_states in zip(seqs, states, strict=True):
            seq.latents = list(rows_states[len(seq.prompt_ids) - 1 :])

    def _update(self, seq: Sequence, out) -> None:
        completion = out.outputs[0]
        had = len(seq.output_ids)
        seq.output_ids = list(completion.token_ids)
        if seq.params.logprobs is not None and completion.logprobs:
            k = seq.params.logprobs
            for token, entry in zip(seq.output_ids[had:], completion.logprobs[had:], strict=True):
                top = sorted(
                    ((tid, lp.logprob) for tid, lp in entry.items() if lp.rank <= k),
                    key=lambda item: -item[1],
                )[:k]
                seq.logprobs.append(TokenLogprob(token, float(entry[token].logprob), top))
        if out.finished:
            self._seqs.pop(seq.vllm_id, None)
            reason = str(completion.finish_reason)
            if reason not in _FINISH:  # "error" (vLLM failed the request) or unknown
                seq.error = f"vLLM ended the sequence with {reason!r}"
            seq.finish_reason = _FINISH.get(reason, "abort")

    def _drop_finished(self) -> None:
        """Sequences ended from above (stop string, deadline, abort) leave vLLM."""
        done = [key for key, seq in self._seqs.items() if seq.finished]
        if done:
            self.llm.abort_request(done)
            for key in done:
                self._seqs.pop(key)

    def _params(self, seq: Sequence):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        p = seq.params
        stops = set(p.stop_token_ids) | (set() if p.ignore_eos else self.eos_token_ids)
        seed = p.seed
        if seed is None and not p.greedy:  # as the torch runner: a fresh draw, not the
            seed = random.getrandbits(62)  # engine-wide generator replayed after a restart
        return SamplingParams(
            max_tokens=p.max_tokens,
            temperature=0.0 if p.greedy else p.temperature,
            top_p=p.top_p,
            seed=seed,
            stop_token_ids=sorted(stops),
            ignore_eos=True,  # EOS ids are in stop_token_ids unless the request ignores EOS
            logprobs=p.logprobs,
            detokenize=False,
            output_kind=RequestOutputKind.CUMULATIVE,
        )

    def shutdown(self) -> None:
        """Stop vLLM's engine-core process (LLMEngine has no public stop of its own)."""
        self.llm.engine_core.shutdown(timeout=10)


def _start_engine(model_dir, *, dtype, device, max_num_seqs, max_model_len, kv_cache_gib):
    from vllm import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    kwargs = {}
    if device.type == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    else:
        kwargs["kv_cache_memory_bytes"] = kv_cache_gib << 30
    args = EngineArgs(
        model=str(model_dir),
        dtype=dtype,
        enforce_eager=True,  # no graph capture / torch.compile: start in seconds on CPU
        enable_prefix_caching=True,
        scheduling_policy="priority",  # by request arrival (VLLMRunner.add)
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
        skip_tokenizer_init=True,
        disable_log_stats=True,
        **kwargs,
    )
    log.info("starting vLLM on %s (%s)", model_dir, device)
    return LLMEngine.from_engine_args(args)
