"""The engine loop: drives every request's program and batches their needs.

The engine owns the model runner and runs in one background thread (torch releases the
GIL inside its ops, so the asyncio HTTP loop stays responsive). Each iteration it
1. takes new requests and cancellations from its inbox,
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

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from latent_ops.program import Generate, Generation, Program
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

    request_id: str
    method: str = "none"
    arrival: float = 0.0
    scheduled: float | None = None  # first sequence admitted to the batch
    first_token: float | None = None
    finished: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    outcome: str = "pending"  # "stop" | "length" | "abort" | "cancelled" | "error"


@dataclass
class _Request:
    request_id: str
    program: Program
    sink: Callable[[Any], None]
    stats: RequestStats
    pending: list[tuple[Sequence, Generate]] = field(default_factory=list)
    detok: dict[int, _Detok] = field(default_factory=dict)
    started: bool = False
    cancelled: bool = False


@dataclass
class _Detok:
    """Incremental detokenization and stop-string matching for one sequence."""

    stop: list[str]
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
    ):
        self.runner = runner
        self.tokenizer = tokenizer
        self.max_queued_requests = max_queued_requests
        self.on_finish = on_finish
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._requests: dict[str, _Request] = {}
        self._seq_ids = itertools.count()
        self._owner: dict[int, _Request] = {}  # runner seq_id -> its request
        self._waiting = 0  # submitted, no sequence admitted yet (read from other threads)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.error: BaseException | None = None

    # ---- public, any thread -------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="latentserve-engine", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    @property
    def num_waiting(self) -> int:
        return self._waiting

    @property
    def num_running(self) -> int:
        return len(self._requests) - self._waiting if self._requests else 0

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
                if not self.runner.has_work:
                    self._wake.wait(timeout=0.5)
                    self._wake.clear()
                    continue
                self._step()
        except BaseException as exc:  # noqa: BLE001 - the engine must report, not vanish
            log.exception("engine loop died")
            self.error = exc
            for req in list(self._requests.values()):
                self._fail(req, exc)

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "submit":
                self._requests[item.request_id] = item
                self._advance(item, None)
            elif kind == "cancel":
                req = self._requests.get(item)
                if req is not None:
                    req.cancelled = True
                    req.stats.outcome = "cancelled"
                    for seq, _ in req.pending:
                        self.runner.abort(seq)
                    self._finish(req, Failed(CancelledError(item)))

    def _step(self) -> None:
        try:
            stepped = self.runner.step()
        except Exception as exc:  # noqa: BLE001 - a failed batch fails its own requests only
            log.exception("runner step failed")
            self._fail_batch(exc)
            return
        now = time.monotonic()
        touched: dict[str, _Request] = {}
        for seq in stepped:
            req = self._owner.get(seq.seq_id)
            if req is None:
                continue
            touched[req.request_id] = req
            if not req.started:
                req.started = True
                req.stats.scheduled = now
                with self._lock:
                    self._waiting -= 1
            if req.stats.first_token is None:
                req.stats.first_token = now
            self._detokenize(req, seq)
        for req in touched.values():
            if all(seq.finished for seq, _ in req.pending):
                results = [self._result(seq, req) for seq, _ in req.pending]
                for seq, _ in req.pending:
                    self._owner.pop(seq.seq_id, None)
                req.pending = []
                self._advance(req, results)

    def _advance(self, req: _Request, results: list[Generation] | None) -> None:
        """Send results into the program; queue its next needs or finish it."""
        try:
            needs = req.program.send(results)
        except StopIteration as stop:
            if results:
                req.stats.outcome = results[0].finish_reason
            self._finish(req, Done(stop.value))
            return
        except Exception as exc:  # noqa: BLE001 - a program error fails its request only
            log.exception("program of %s failed", req.request_id)
            self._fail(req, exc)
            return
        for need in needs:
            seq = Sequence(next(self._seq_ids), list(need.prompt_ids), need.params)
            req.pending.append((seq, need))
            req.detok[seq.seq_id] = _Detok(stop=list(need.params.stop))
            req.stats.prompt_tokens += len(need.prompt_ids)
            self._owner[seq.seq_id] = req
            self.runner.add(seq)

    def _detokenize(self, req: _Request, seq: Sequence) -> None:
        state = req.detok[seq.seq_id]
        need = next(n for s, n in req.pending if s is seq)
        text = self.tokenizer.decode(seq.output_ids, skip_special_tokens=True)
        hold = 0
        if state.stop:
            start = max(0, state.emitted - max(len(s) for s in state.stop))
            cut = min((i for s in state.stop if (i := text.find(s, start)) >= 0), default=-1)
            if cut >= 0:
                text = text[:cut]
                self.runner.finish(seq, "stop")
            elif not seq.finished:
                hold = _partial_stop_suffix(text, state.stop)
        state.text = text
        if need.stream_index is None:
            return
        end = len(text) - hold
        if not seq.finished:
            while end > state.emitted and text[end - 1] == "\ufffd":  # incomplete UTF-8
                end -= 1
        if end > state.emitted or seq.finished:
            tokens = seq.output_ids[state.emitted_tokens :]
            lps = seq.logprobs[state.emitted_tokens :] if seq.params.logprobs is not None else None
            state.emitted_tokens = len(seq.output_ids)
            req.sink(Delta(need.stream_index, text[state.emitted : end], tokens, lps))
            state.emitted = end

    def _result(self, seq: Sequence, req: _Request) -> Generation:
        req.stats.completion_tokens += len(seq.output_ids)
        return Generation(
            token_ids=list(seq.output_ids),
            text=req.detok[seq.seq_id].text,
            finish_reason=seq.finish_reason or "stop",
            prompt_tokens=len(seq.prompt_ids),
            latents=seq.latents_tensor(),
            logprobs=list(seq.logprobs) if seq.params.logprobs is not None else None,
        )

    def _fail_batch(self, exc: BaseException) -> None:
        """Fail the requests whose sequences were in the failed pass; waiting ones stay."""
        waiting = {id(seq) for seq in self.runner.waiting}
        victims = [
            req
            for req in self._requests.values()
            if any(id(seq) not in waiting for seq, _ in req.pending)
        ]
        self.runner.reset()
        for req in victims:
            self._fail(req, exc)

    def _fail(self, req: _Request, exc: BaseException) -> None:
        for seq, _ in req.pending:
            self.runner.abort(seq)
        req.stats.outcome = "error"
        self._finish(req, Failed(exc))

    def _finish(self, req: _Request, event) -> None:
        if self._requests.pop(req.request_id, None) is None:
            return
        for seq, _ in req.pending:
            self._owner.pop(seq.seq_id, None)
        if not req.started:
            with self._lock:
                self._waiting -= 1
        req.program.close()
        req.stats.finished = time.monotonic()
        try:
            req.sink(event)
        finally:
            if self.on_finish is not None:
                self.on_finish(req.stats)


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
