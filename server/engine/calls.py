"""Running `Call` needs off the engine thread.

A program's `Call` (a reward webhook, any blocking or awaiting function) must not hold
the engine loop. `CallRunner.start(fn, deliver)` runs an `async def` fn on one I/O event
loop thread (any number wait on I/O at once, and cancelling one stops its exchange) and
anything else on a small thread pool; its outcome (the value, or the exception it
raised) goes to `deliver` on that thread. It returns a future the engine cancels when
the request ends first; a cancelled call delivers nothing.

It does not judge outcomes (the program does) or know about requests: the engine
(server/engine/engine.py) passes a `deliver` that puts the outcome into its inbox.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class CallRunner:
    def __init__(self, max_workers: int = 16):
        self._pool = ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="latentserve-call"
        )
        self._io_loop = asyncio.new_event_loop()
        self._io_thread = threading.Thread(
            target=self._io_loop.run_forever, name="latentserve-io", daemon=True
        )

    def start_io(self) -> None:
        self._io_thread.start()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._io_thread.is_alive():
            self._io_loop.call_soon_threadsafe(self._io_loop.stop)

    def start(self, fn: Callable[[], Any], deliver: Callable[[Any], None]) -> Future:
        """Run fn: an `async def` on the I/O loop, anything else on the pool."""
        if inspect.iscoroutinefunction(fn):
            future = asyncio.run_coroutine_threadsafe(fn(), self._io_loop)

            def done(f) -> None:
                if not f.cancelled():
                    deliver(f.exception() or f.result())

            future.add_done_callback(done)
            return future

        def run():
            try:
                outcome = fn()
            except Exception as exc:  # noqa: BLE001 - the program judges the failure
                outcome = exc
            deliver(outcome)

        return self._pool.submit(run)
