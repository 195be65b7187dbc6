"""The engine loop: drives every request's program and batches their needs.

The engine owns the runner and runs on its own thread (torch releases the GIL inside its
ops, so the asyncio HTTP loop stays responsive). Each iteration it
1. takes submissions, cancellations and finished `Call`s from its inbox;
2. advances programs whose needs are all met and dispatches their next needs: `Generate`
   becomes a runner sequence, `Call` runs off this thread (server/engine/calls.py), and
   every request's `LatentUpdate` joins one batched update (latent_updates.py);
3. runs one runner step, ends sequences past their deadline, and feeds each sequence's
   tokens to its `Detokenizer` (detokenizer.py: stop strings, streaming deltas);
4. sends finished results back into their programs.
Admission is decided here (`submit` raises `QueueFull`): only the engine knows how many
requests wait. A failed runner step fails the requests of that batch only; a failed
program, call or latent update fails its own request only.

Not here: events, stats and the `Runner` protocol (interface.py), building an engine and
running programs without HTTP (build.py), decoding (runner.py), metrics (server/metrics.py
gets `RequestStats` through the `on_finish` callback).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from latent_ops.program import Call, Generate, LatentUpdate, Program, Report
from server.engine.calls import CallRunner
from server.engine.detokenizer import Detokenizer
from server.engine.interface import (
    CancelledError,
    Delta,
    Done,
    EngineDead,
    Failed,
    Progress,
    QueueFull,
    RequestStats,
    Runner,
)
from server.engine.latent_updates import run_latent_updates
from server.engine.sequence import Sequence, sequence_for

log = logging.getLogger("latentserve.engine")


@dataclass
class _Request:
    request_id: str
    program: Program
    sink: Callable[[Any], None]
    stats: RequestStats
    needs: list = field(default_factory=list)  # the program's current needs
    results: list = field(default_factory=list)  # one slot per need
    remaining: int = 0  # unfilled slots
    started: bool = False
    calls: list = field(default_factory=list)  # futures of its Calls in flight


@dataclass
class _SeqRecord:
    """One runner sequence in flight: its request, the need slot it fills, its text."""

    seq: Sequence
    req: _Request
    slot: int
    detok: Detokenizer
    loops: int = 0  # SLR loops already reported


class Engine:
    def __init__(
        self,
        runner: Runner,
        tokenizer,
        max_queued_requests: int = 64,
        on_finish: Callable[[RequestStats], None] | None = None,
        on_latent_update: Callable[[float, int], None] | None = None,
        latent_impl: str = "auto",
        refinement_yield_s: float = 0.0,
    ):
        self.runner = runner
        # Scheduling: a refining request's sequences are admitted as if it had arrived this
        # much later, so plain requests that came up to that long after it go first
        self.refinement_yield_s = refinement_yield_s
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
        self._seqs: dict[int, _SeqRecord] = {}  # runner seq_id -> its sequence in flight
        self._eos = set(runner.eos_token_ids)
        self._waiting = 0  # submitted, no sequence admitted yet (read from other threads)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._calls = CallRunner()  # Call needs, off this thread
        self._stop = False
        self.error: BaseException | None = None

    # ---- public, any thread -------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="latentserve-engine", daemon=True)
        self._thread.start()
        self._calls.start_io()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._calls.shutdown()
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
                req, slot, outcome, seconds = item
                req.stats.call_s += seconds
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
        done: list[_SeqRecord] = []
        in_step: set[str] = set()
        for seq in stepped:
            rec = self._seqs.get(seq.seq_id)
            if rec is None:
                continue
            req = rec.req
            if req.request_id not in in_step:
                in_step.add(req.request_id)
                req.stats.forward_passes += 1
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
            state = seq.thought_state
            if state is not None and state.cfg.report_progress and state.loops > rec.loops:
                rec.loops = state.loops  # an SLR loop ended: its progress event
                info = {"method": req.stats.method, "loop": state.loops}
                req.sink(Progress(info | {"delta": state.deltas[-1]}))
            self._detokenize(rec)  # may end it (a stop string)
            if seq.finished:
                done.append(rec)
        # what the runner adds to a finished sequence (the vllm backend's latents)
        self.runner.complete([rec.seq for rec in done])
        for rec in done:
            req, seq = rec.req, rec.seq
            if req.request_id not in self._requests:
                continue  # failed meanwhile
            if seq.error is not None:
                self._fail(req, RuntimeError(seq.error))
                continue
            del self._seqs[seq.seq_id]
            req.stats.generated_tokens += len(seq.output_ids)
            self._resolve(req, rec.slot, rec.detok.generation(seq))

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
        """One batched latent update for the rows of every request waiting on one."""
        batch, self._updates = self._updates, []
        batch = [(req, slot, u) for req, slot, u in batch if req.request_id in self._requests]
        start = time.monotonic()
        run_latent_updates(
            batch,
            self.runner.lm_head,
            resolve=self._resolve,
            fail=self._fail,
            impl=self.latent_impl,
            on_update=self.on_latent_update,
        )
        seconds = time.monotonic() - start
        for req in {id(r): r for r, _, _ in batch}.values():
            req.stats.latent_update_s += seconds
        for req, _, update in batch:
            req.stats.latent_update_rows += update.z.shape[0]

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
                elif isinstance(need, Report):
                    req.sink(Progress(need.info))
                    self._resolve(req, slot, None)
                elif isinstance(need, Call):
                    self._start_call(req, slot, need)
                else:
                    self._start_generate(req, slot, need)
        except Exception as exc:  # noqa: BLE001
            log.exception("needs of %s could not be queued", req.request_id)
            self._fail(req, exc)

    def _start_call(self, req: _Request, slot: int, need: Call) -> None:
        """Run need.fn off the engine loop; its outcome comes back through the inbox. When
        the request ends first, `_finish` cancels it."""

        start = time.monotonic()

        def deliver(outcome) -> None:
            self._inbox.put(("called", (req, slot, outcome, time.monotonic() - start)))
            self._wake.set()

        future = self._calls.start(need.fn, deliver)
        req.calls = [f for f in req.calls if not f.done()] + [future]

    def _start_generate(self, req: _Request, slot: int, need: Generate) -> None:
        seq, prefix = sequence_for(need, next(self._seq_ids), self._eos)
        req.stats.prompt_tokens += len(need.prompt_ids)
        detok = Detokenizer(self.tokenizer, need.params.stop, prefix)
        if seq.finished:  # nothing to decode: the forced prefix is the whole answer
            detok.update(seq)
            self._resolve(req, slot, detok.generation(seq))
            return
        refining = req.stats.method not in (None, "none")
        seq.priority = req.stats.arrival + (self.refinement_yield_s if refining else 0.0)
        if need.cache_prompt:
            seq.cache_key, seq.cache_len = req.request_id, len(need.prompt_ids)
        self._seqs[seq.seq_id] = _SeqRecord(seq, req, slot, detok)
        self.runner.add(seq)

    def _detokenize(self, rec: _SeqRecord) -> None:
        """Text and stop strings for rec's new tokens; a streamed need gets its delta."""
        rec.detok.update(rec.seq)
        need = rec.req.needs[rec.slot]
        if need.stream_index is None:
            return
        delta = rec.detok.delta(rec.seq)
        if delta is not None:
            rec.req.sink(Delta(need.stream_index, *delta))

    def _fail_batch(self, exc: BaseException) -> None:
        """Fail the requests whose sequences were in the failed pass; waiting ones stay."""
        waiting = {id(seq) for seq in self.runner.waiting}
        hit = {id(rec.req) for rec in self._seqs.values() if id(rec.seq) not in waiting}
        victims = [req for req in self._requests.values() if id(req) in hit]
        self.runner.reset()
        for req in victims:
            self._fail(req, exc)

    def _fail(self, req: _Request, exc: BaseException) -> None:
        req.stats.outcome = "error"
        self._finish(req, Failed(exc))

    def _finish(self, req: _Request, event) -> None:
        if self._requests.pop(req.request_id, None) is None:
            return
        for seq_id in [i for i, rec in self._seqs.items() if rec.req is req]:
            self.runner.abort(self._seqs.pop(seq_id).seq)
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
            stats.record_output(event.output)
        try:
            req.sink(event)
            if self.on_finish is not None:
                self.on_finish(stats)
        except Exception:  # noqa: BLE001 - a reporting failure must not stop the engine
            log.exception("reporting the end of %s failed", req.request_id)
