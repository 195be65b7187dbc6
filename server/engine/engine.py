"""The engine loop: drives every request's program and batches their needs.

The engine owns the model runner and runs in one background thread (torch releases the
GIL inside its ops, so the asyncio HTTP loop stays responsive). Each iteration it
1. takes new requests, cancellations and finished `Call`s (blocking I/O such as a
   reward webhook, run on a small thread pool) from its inbox,
2. starts or resumes programs whose previous needs are all met, turning `Generate`
   needs into runner sequences,
3. runs one runner step (one decode pass for the whole batch plus prefill of admitted
   sequences), detokenizes, applies stop strings and streams text deltas,
4. sends finished results back into their programs.

Requests talk to the outside through a *sink*: a callable taking one event, invoked on
the engine thread (the HTTP layer wraps it to hop onto its event loop). Events:
`Delta(index, text, token_ids, logprobs)` while plain generation streams, then exactly
one of `Done(output)` or `Failed(error)`.

Admission is decided here (`submit` raises `QueueFull`), because only the engine knows
how many requests wait. Timing and token counts go out as plain `RequestStats` records to
an `on_finish` callback (metrics live in `server/metrics.py`, not here).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from kernels import latent_pg_step
from latent_ops.latentseek import LatentUpdate
from latent_ops.program import Call, Generate, Generation, Program
from server.engine.runner import ModelRunner, Sequence

log = logging.getLogger("latentserve.engine")


class QueueFull(RuntimeError):
    """More requests wait than `max_queued_requests` allows."""


class EngineDead(RuntimeError):
    """The engine thread is not running."""


@dataclass
class Delta:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list | None = None


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


@dataclass
class _Request:
    request_id: str
    program: Program
    sink: Callable[[Any], None]
    stats: RequestStats
    needs: list = field(default_factory=list)  # the program's current needs
    results: list = field(default_factory=list)  # one slot per need
    remaining: int = 0  # unfilled slots
    seqs: dict[int, tuple[Sequence, int]] = field(default_factory=dict)  # seq_id -> (seq, slot)
    detok: dict[int, _Detok] = field(default_factory=dict)
    started: bool = False
    calls: list = field(default_factory=list)  # futures of its Calls in flight


@dataclass
class _Detok:
    """Incremental detokenization and stop-string matching for one sequence."""

    stop: list[str]
    prefix_ids: list[int] = field(default_factory=list)  # forced tokens leading the output
    text: str = ""
    emitted: int = 0  # chars of `text` already streamed
    emitted_tokens: int = 0


class Engine:
    def __init__(
        self,
        runner: ModelRunner,
        tokenizer,
        max_queued_requests: int = 64,
        on_finish: Callable[[RequestStats], None] | None = None,
        on_latent_update: Callable[[float, int], None] | None = None,
        latent_impl: str = "auto",
    ):
        self.runner = runner
        self.tokenizer = tokenizer
        self.max_queued_requests = max_queued_requests
        self.on_finish = on_finish
        self.on_latent_update = on_latent_update  # (seconds, rows) per batched update
        self.latent_impl = latent_impl
        self._updates: list[tuple[_Request, int, LatentUpdate]] = []  # pending, all requests
        self._ready: list[_Request] = []  # every need met: advance the program
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._requests: dict[str, _Request] = {}
        self._seq_ids = itertools.count()
        self._owner: dict[int, _Request] = {}  # runner seq_id -> its request
        self._eos = set(runner.eos_token_ids)
        self._waiting = 0  # submitted, no sequence admitted yet (read from other threads)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._calls = ThreadPoolExecutor(max_workers=16, thread_name_prefix="latentserve-call")
        # `async def` Calls (reward webhooks) run here: any number wait on I/O at once, and
        # cancelling one (its request ended) stops its exchange.
        self._io_loop = asyncio.new_event_loop()
        self._io_thread = threading.Thread(
            target=self._io_loop.run_forever, name="latentserve-io", daemon=True
        )
        self._stop = False
        self.error: BaseException | None = None

    # ---- public, any thread -------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="latentserve-engine", daemon=True)
        self._thread.start()
        self._io_thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._calls.shutdown(wait=False, cancel_futures=True)
        if self._io_thread.is_alive():
            self._io_loop.call_soon_threadsafe(self._io_loop.stop)
        self.runner.shutdown()

    @property
    def alive(self) -> bool:
        """The loop runs and its runner can still decode (/health answers 503 otherwise)."""
        thread_ok = self._thread is not None and self._thread.is_alive() and self.error is None
        return thread_ok and self.runner.healthy

    @property
    def num_waiting(self) -> int:
        return self._waiting

    @property
    def adapters(self) -> dict:
        """Loaded SLR loop adapters by name (latent_ops.lora.LoopAdapter)."""
        return self.runner.lora.adapters if self.runner.lora is not None else {}

    @property
    def num_running(self) -> int:
        return max(0, len(self._requests) - self._waiting)

    def submit(self, request_id: str, program: Program, sink, stats: RequestStats) -> None:
        """Queue a request or raise QueueFull / EngineDead at once."""
        if not self.alive:
            raise EngineDead("engine is not running")
        with self._lock:
            if self._waiting >= self.max_queued_requests:
                raise QueueFull(f"{self._waiting} requests are waiting")
            self._waiting += 1
        stats.arrival = stats.arrival or time.monotonic()
        self._inbox.put(("submit", _Request(request_id, program, sink, stats)))
        self._wake.set()

    def cancel(self, request_id: str) -> None:
        self._inbox.put(("cancel", request_id))
        self._wake.set()

    # ---- engine thread ------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stop:
                self._drain_inbox()
                self._pump()
                if not self.runner.has_work:
                    self._wake.wait(timeout=0.5)
                    self._wake.clear()
                    continue
                self._step()
        except BaseException as exc:  # noqa: BLE001 - the engine must report, not vanish
            log.exception("engine loop died")
            self.error = exc
            for kind, item in self._take_inbox():  # queued submissions fail too
                if kind == "submit":
                    self._requests[item.request_id] = item
            for req in list(self._requests.values()):
                self._fail(req, exc)

    def _take_inbox(self):
        while True:
            try:
                yield self._inbox.get_nowait()
            except queue.Empty:
                return

    def _drain_inbox(self) -> None:
        for kind, item in self._take_inbox():
            if kind == "submit":
                self._requests[item.request_id] = item
                self._advance(item, None)
            elif kind == "called":
                req, slot, outcome = item
                if req.request_id in self._requests:
                    self._resolve(req, slot, outcome)
            elif kind == "cancel":
                req = self._requests.get(item)
                if req is not None:
                    req.stats.outcome = "cancelled"
                    self._finish(req, Failed(CancelledError(item)))

    def _step(self) -> None:
        now = time.monotonic()
        expired = [
            seq
            for seq in self.runner.running
            if seq.params.deadline is not None and now >= seq.params.deadline and not seq.finished
        ]
        for seq in expired:  # they leave the batch in this step, undecoded: answer them here
            self.runner.finish(seq, "deadline")
        try:
            stepped = expired + self.runner.step()
        except Exception as exc:  # noqa: BLE001 - a failed batch fails its own requests only
            log.exception("runner step failed")
            self._fail_batch(exc)
            return
        now = time.monotonic()
        done: list[tuple[_Request, Sequence]] = []
        for seq in stepped:
            req = self._owner.get(seq.seq_id)
            if req is None:
                continue
            if not req.started:
                req.started = True
                req.stats.scheduled = now
                with self._lock:
                    self._waiting -= 1
            if seq.error is not None:  # the runner failed this sequence alone
                self._fail(req, RuntimeError(seq.error))
                continue
            if req.stats.first_token is None and seq.output_ids:  # a thought is no token
                req.stats.first_token = now
            self._detokenize(req, seq)  # may end it (a stop string)
            if seq.finished:
                done.append((req, seq))
        # what the runner adds to a finished sequence (the vllm backend's latents)
        self.runner.complete([seq for _, seq in done])
        for req, seq in done:
            if req.request_id not in self._requests:
                continue  # failed meanwhile
            if seq.error is not None:
                self._fail(req, RuntimeError(seq.error))
                continue
            self._owner.pop(seq.seq_id, None)
            _, slot = req.seqs.pop(seq.seq_id)
            self._resolve(req, slot, self._result(seq, req.detok.pop(seq.seq_id)))

    def _pump(self) -> None:
        """Run batched latent updates and advance programs until all wait on the runner."""
        while self._ready or self._updates:
            if self._updates:
                self._run_latent_updates()
            ready, self._ready = self._ready, []
            for req in ready:
                if req.request_id in self._requests:
                    self._advance(req, req.results)

    def _run_latent_updates(self) -> None:
        """One `kernels.latent_pg_step` call for the latent rows of every waiting request."""
        batch, self._updates = self._updates, []
        batch = [(req, slot, u) for req, slot, u in batch if req.request_id in self._requests]
        if not batch:
            return
        try:
            self._latent_update_batch(batch)
        except Exception as exc:  # noqa: BLE001 - isolate: each request's rows alone
            if len(batch) == 1:
                log.exception("latent update failed")
                self._fail(batch[0][0], exc)
                return
            log.warning("batched latent update failed (%s); retrying per request", exc)
            for item in batch:
                try:
                    self._latent_update_batch([item])
                except Exception as alone:  # noqa: BLE001 - fails its own request only
                    log.exception("latent update of %s failed", item[0].request_id)
                    self._fail(item[0], alone)

    def _latent_update_batch(self, batch) -> None:
        weight = self.runner.lm_head.weight
        device = weight.device
        sizes = [u.z.shape[0] for _, _, u in batch]

        def cat(get):
            return torch.cat([get(u).to(device) for _, _, u in batch])

        def per_row(get, dtype):
            return torch.cat(
                [torch.full((n,), get(u), dtype=dtype) for (_, _, u), n in zip(batch, sizes)]
            ).to(device)

        z, m, v = cat(lambda u: u.z), cat(lambda u: u.exp_avg), cat(lambda u: u.exp_avg_sq)
        start = time.perf_counter()
        tokens = latent_pg_step(
            z,
            weight,
            per_row(lambda u: u.reward, torch.float32),
            per_row(lambda u: u.lr, torch.float32),
            m,
            v,
            per_row(lambda u: u.step, torch.long),
            impl=self.latent_impl,
        )
        if self.on_latent_update is not None:
            self.on_latent_update(time.perf_counter() - start, z.shape[0])
        # per request: are all its rows finite after the step? (one host sync for all)
        finite = torch.stack(
            [
                torch.isfinite(zs).all() & torch.isfinite(ms).all() & torch.isfinite(vs).all()
                for zs, ms, vs in zip(z.split(sizes), m.split(sizes), v.split(sizes))
            ]
        ).tolist()
        for (req, slot, u), zs, ms, vs, ts, ok in zip(
            batch, z.split(sizes), m.split(sizes), v.split(sizes), tokens.cpu().split(sizes), finite
        ):
            if not ok:  # its own reward or state broke it: its rows stay as they were
                self._resolve(req, slot, FloatingPointError("latent update is not finite"))
                continue
            u.z.copy_(zs)
            u.exp_avg.copy_(ms)
            u.exp_avg_sq.copy_(vs)
            self._resolve(req, slot, ts)

    def _resolve(self, req: _Request, slot: int, result) -> None:
        req.results[slot] = result
        req.remaining -= 1
        if req.remaining == 0:
            self._ready.append(req)

    def _advance(self, req: _Request, results: list | None) -> None:
        """Send results into the program; queue its next needs or finish it."""
        try:
            needs = req.program.send(results)
        except StopIteration as stop:
            self._finish(req, Done(stop.value))
            return
        except Exception as exc:  # noqa: BLE001 - a program error fails its request only
            log.exception("program of %s failed", req.request_id)
            self._fail(req, exc)
            return
        try:
            if not needs:
                raise RuntimeError("a program yielded no needs")
            req.needs, req.results, req.remaining = needs, [None] * len(needs), len(needs)
            for slot, need in enumerate(needs):
                if isinstance(need, LatentUpdate):
                    self._updates.append((req, slot, need))
                elif isinstance(need, Call):
                    self._start_call(req, slot, need)
                else:
                    self._start_generate(req, slot, need)
        except Exception as exc:  # noqa: BLE001
            log.exception("needs of %s could not be queued", req.request_id)
            self._fail(req, exc)

    def _start_call(self, req: _Request, slot: int, need: Call) -> None:
        """Run need.fn off the engine loop: an `async def` on the I/O loop, anything else
        on the call pool. Its outcome comes back through the inbox; when the request
        ends first, `_finish` cancels it."""

        def deliver(outcome) -> None:
            self._inbox.put(("called", (req, slot, outcome)))
            self._wake.set()

        if inspect.iscoroutinefunction(need.fn):
            future = asyncio.run_coroutine_threadsafe(need.fn(), self._io_loop)

            def done(f) -> None:
                if not f.cancelled():
                    deliver(f.exception() or f.result())

            future.add_done_callback(done)
        else:

            def run():
                try:
                    outcome = need.fn()
                except Exception as exc:  # noqa: BLE001 - the program judges the failure
                    outcome = exc
                deliver(outcome)

            future = self._calls.submit(run)
        req.calls = [f for f in req.calls if not f.done()] + [future]

    def _start_generate(self, req: _Request, slot: int, need: Generate) -> None:
        params, prefix = need.params, list(need.prefix_ids)
        stops = self._eos if not params.ignore_eos else set()
        stops = stops | set(params.stop_token_ids)
        cut = next((i for i, t in enumerate(prefix) if t in stops), None)
        req.stats.prompt_tokens += len(need.prompt_ids)
        if cut is not None or len(prefix) >= params.max_tokens:
            # nothing to decode: the forced prefix is the whole answer
            reason = "stop" if cut is not None else "length"
            prefix = prefix[: cut + 1] if cut is not None else prefix[: params.max_tokens]
            detok = _Detok(stop=list(params.stop), prefix_ids=prefix)
            seq = Sequence(-1, list(need.prompt_ids), params, finish_reason=reason)
            self._detokenize_text(detok, seq)
            self._resolve(req, slot, self._result(seq, detok))
            return
        seq = Sequence(
            next(self._seq_ids),
            list(need.prompt_ids) + prefix,
            replace(params, max_tokens=params.max_tokens - len(prefix)),
        )
        seq.priority = req.stats.arrival
        if need.cache_prompt:
            seq.cache_key, seq.cache_len = req.request_id, len(need.prompt_ids)
        seq.thoughts = need.thoughts
        req.seqs[seq.seq_id] = (seq, slot)
        req.detok[seq.seq_id] = _Detok(stop=list(params.stop), prefix_ids=prefix)
        self._owner[seq.seq_id] = req
        self.runner.add(seq)

    def _detokenize_text(self, state: _Detok, seq: Sequence) -> int:
        """Update state.text for seq's tokens; apply stop strings. Returns chars to hold back."""
        ids = state.prefix_ids + seq.output_ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        hold = 0
        if state.stop:
            start = max(0, state.emitted - max(len(s) for s in state.stop))
            cut = min((i for s in state.stop if (i := text.find(s, start)) >= 0), default=-1)
            if cut >= 0:
                text = text[:cut]
                if seq.finish_reason in (None, "length"):
                    seq.finish_reason = "stop"  # the stop string ended it, even on the last token
            elif not seq.finished:
                hold = _partial_stop_suffix(text, state.stop)
        state.text = text
        return hold

    def _detokenize(self, req: _Request, seq: Sequence) -> None:
        state = req.detok[seq.seq_id]
        hold = self._detokenize_text(state, seq)
        need = req.needs[req.seqs[seq.seq_id][1]]
        if need.stream_index is None:
            return
        text = state.text
        end = len(text) - hold
        if not seq.finished:
            while end > state.emitted and text[end - 1] == "\ufffd":  # incomplete UTF-8
                end -= 1
        if end > state.emitted or seq.finished:
            tokens = seq.output_ids[state.emitted_tokens :]
            lps = seq.logprobs[state.emitted_tokens :] if seq.params.logprobs is not None else None
            state.emitted_tokens = len(seq.output_ids)
            req.sink(Delta(need.stream_index, text[state.emitted : end], tokens, lps))
            state.emitted = max(end, state.emitted)

    def _result(self, seq: Sequence, detok: _Detok) -> Generation:
        latents = seq.latents_tensor()
        return Generation(
            token_ids=detok.prefix_ids + list(seq.output_ids),
            text=detok.text,
            finish_reason=seq.finish_reason or "stop",
            prompt_tokens=len(seq.prompt_ids) - len(detok.prefix_ids),
            latents=latents,
            logprobs=list(seq.logprobs) if seq.params.logprobs is not None else None,
            thoughts=seq.thought_state.summary() if seq.thought_state is not None else None,
        )

    def _fail_batch(self, exc: BaseException) -> None:
        """Fail the requests whose sequences were in the failed pass; waiting ones stay."""
        waiting = {id(seq) for seq in self.runner.waiting}
        victims = [
            req
            for req in self._requests.values()
            if any(id(seq) not in waiting for seq, _ in req.seqs.values())
        ]
        self.runner.reset()
        for req in victims:
            self._fail(req, exc)

    def _fail(self, req: _Request, exc: BaseException) -> None:
        req.stats.outcome = "error"
        self._finish(req, Failed(exc))

    def _finish(self, req: _Request, event) -> None:
        if self._requests.pop(req.request_id, None) is None:
            return
        for seq_id, (seq, _) in req.seqs.items():
            self.runner.abort(seq)
            self._owner.pop(seq_id, None)
        req.seqs.clear()
        for call in req.calls:  # a webhook still waiting for its grader stops here
            call.cancel()
        self.runner.release(req.request_id)
        if not req.started:
            with self._lock:
                self._waiting -= 1
        req.program.close()
        stats = req.stats
        stats.finished = time.monotonic()
        if isinstance(event, Done):
            _record_output(stats, event.output)
        try:
            req.sink(event)
            if self.on_finish is not None:
                self.on_finish(stats)
        except Exception:  # noqa: BLE001 - a reporting failure must not stop the engine
            log.exception("reporting the end of %s failed", req.request_id)


def _record_output(stats: RequestStats, output) -> None:
    """Token counts and outcome from a program's output (plain list or a `Refined`)."""
    generations = output if isinstance(output, list) else [getattr(output, "generation", None)]
    generations = [g for g in generations if isinstance(g, Generation)]
    stats.completion_tokens = sum(len(g.token_ids) for g in generations)
    if generations:
        stats.outcome = generations[0].finish_reason
    if hasattr(output, "summary"):
        stats.refinement = output.summary()
        stats.trace = getattr(output, "trace", None)
        stats.refinement_tokens = output.refinement_tokens


class CancelledError(RuntimeError):
    """The client went away; the request's work was stopped."""


def _partial_stop_suffix(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


def build_engine(
    loaded,
    *,
    max_batch_size: int = 8,
    max_model_len: int | None = None,
    max_queued_requests: int = 64,
    on_finish=None,
    on_latent_update=None,
    slr_adapters: dict[str, str] | None = None,
    backend: str = "hf",
    vllm_kv_cache_gib: int = 2,
) -> Engine:
    """A runner and an engine (not started) for a `LoadedModel`.

    The context length is the smaller of `max_model_len` and the model's own.
    slr_adapters: name -> directory of SLR loop adapters (`latentserve train-slr`).
    backend: `hf` (the torch runner decodes) or `vllm` (vLLM decodes, torch keeps the
    latents: server/engine/vllm_runner.py); vLLM loads `loaded.path` itself.
    """
    model, tok = loaded.model, loaded.tokenizer
    model_len = getattr(model.config, "max_position_embeddings", None) or 2048
    runner = ModelRunner(
        model,
        max_batch_size=max_batch_size,
        max_model_len=min(max_model_len or model_len, model_len),
        eos_token_ids=eos_token_ids(model, tok),
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
    )
    if slr_adapters:
        from latent_ops.lora import LoopAdapter, LoRABank

        bank = LoRABank()
        device = next(model.parameters()).device
        for name, path in slr_adapters.items():
            adapter = LoopAdapter.load(path, model).to(device).requires_grad_(False)
            bank.add(name, adapter)
        bank.install(model)
        runner.lora = bank
    if backend == "vllm":
        from server.engine.vllm_runner import VLLMRunner

        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        runner = VLLMRunner(runner, str(loaded.path), dtype=dtype, kv_cache_gib=vllm_kv_cache_gib)
    elif backend != "hf":
        raise ValueError(f"unknown backend {backend!r}: hf or vllm")
    return Engine(
        runner,
        tok,
        max_queued_requests=max_queued_requests,
        on_finish=on_finish,
        on_latent_update=on_latent_update,
    )


def eos_token_ids(model, tokenizer) -> set[int]:
    """Every end-of-sequence id the generation config, model config or tokenizer names."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def run_programs(engine: Engine, programs, on_done=None, timeout: float | None = None) -> list:
    """Submit programs to a started engine and wait for all; their outputs in order.

    A failed program's output is its exception. `on_done(index, output)` is called on the
    engine thread as each finishes (e.g. a progress bar).
    """
    outputs: list = [None] * len(programs)
    left = threading.Semaphore(0)

    def sink_for(i):
        def sink(event):
            if isinstance(event, (Done, Failed)):
                outputs[i] = event.output if isinstance(event, Done) else event.error
                if on_done is not None:
                    on_done(i, outputs[i])
                left.release()

        return sink

    tag = next(_run_tags)
    for i, program in enumerate(programs):
        rid = f"run{tag}-{i}"
        engine.submit(rid, program, sink_for(i), RequestStats(request_id=rid))
    for _ in programs:
        if not left.acquire(timeout=timeout):
            raise TimeoutError("programs did not finish in time")
    return outputs


_run_tags = itertools.count()
