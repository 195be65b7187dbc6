"""uvicorn as latentserve runs it: its settings, and a header timeout it lacks.

`uvicorn_config(app, config)` is the one place the server's uvicorn settings are made
(`latentserve serve` and the test harness use it). uvicorn's h11 protocol times out idle
keep-alive connections, but not a client that opens a connection and sends its headers
one byte at a time: `GuardedH11Protocol` closes a connection whose request headers are not
complete `--header-timeout-s` after it opened (or after its previous response). The body's
size and time limits are enforced above, in `server/middleware.py`.
"""

from __future__ import annotations

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from server.config import ServerConfig


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers."""

    header_timeout: float = 30.0  # set per server by `uvicorn_config` (a subclass)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()  # a kept-alive connection's next request: the same bound

    def connection_lost(self, exc) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        if not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        # IDLE: no complete request line and headers yet (a request being served, or
        # whose body is arriving, is past IDLE and is the middleware's to time out).
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def uvicorn_config(app, config: ServerConfig, **overrides) -> uvicorn.Config:
    """The uvicorn.Config for `app` under `config`; `overrides` win (tests pass port=0)."""
    protocol = type(
        "GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout": config.header_timeout_s}
    )
    settings = {
        "host": config.host,
        "port": config.port,
        "http": protocol,
        "log_level": config.log_level,
        "log_config": None,  # keep our handlers (server/logs.py)
        "access_log": False,  # our middleware writes one access line per request, with its id
        "timeout_graceful_shutdown": config.drain_timeout,
        **overrides,
    }
    return uvicorn.Config(app, **settings)
