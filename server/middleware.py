"""The ASGI middleware in front of every route: request ids, keys, body limits, access log.

`RequestContext` is pure ASGI (not Starlette's BaseHTTPMiddleware, which hides client
disconnects from the routes). Per HTTP request it
- takes or makes the request id (`x-request-id` in and out, `server.logs.request_id`);
- checks bearer keys on /v1/* and /metrics (401);
- reads the whole body before any route sees it, counting the bytes as they arrive, so
  `--max-request-bytes` holds whatever the headers say (chunked bodies, a missing or
  bogus Content-Length: 413), and `--body-timeout-s` bounds how long a client may take
  to send it (408); the route then reads the buffered body;
- writes one access log line with the status and the time to the last byte.

It does not parse the body (FastAPI does) and does not time out a client that never
finishes its headers: that happens below ASGI (`server/transport.py`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid

from fastapi import Request

from server.config import ServerConfig
from server.errors import error_response
from server.logs import request_id

access = logging.getLogger("latentserve.access")

# After the limit is passed, the rest of the body is read and dropped for at most this
# long before the 413 goes out, so the client, still sending, gets to read it.
_DRAIN_SECONDS = 2.0


class RequestContext:
    def __init__(self, app, config: ServerConfig):
        self.app = app
        self.config = config

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        if len(rid) > 128 or not rid.isprintable():
            rid = uuid.uuid4().hex  # the id goes into logs and headers: keep it tame
        scope.setdefault("state", {})["request_id"] = rid
        request_id.set(rid)
        start, status = time.monotonic(), [0]

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", rid.encode()),
                ]
            await send(message)

        try:
            refusal = self._refusal(request)
            if refusal is None:
                body, refusal = await self._read_body(receive)
            if refusal is not None:
                await refusal(scope, receive, send_with_id)
            elif body is not None:
                await self.app(scope, _replay(body, receive), send_with_id)
        finally:
            path = scope.get("path", "")
            access.info(
                "%s %s %d",
                scope.get("method"),
                path,
                status[0],
                extra={
                    "method": scope.get("method"),
                    "path": path,
                    "status": status[0],
                    "duration_ms": round((time.monotonic() - start) * 1000, 2),
                },
            )

    def _refusal(self, request: Request):
        """An error response when the headers alone rule the request out, else None."""
        config = self.config
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > config.max_request_bytes:
            return error_response(413, f"request body over {config.max_request_bytes} bytes")
        path = request.url.path
        key = config.api_key if path.startswith("/v1/") else None
        if path == "/metrics":
            key = config.metrics_api_key
        if key:
            header = request.headers.get("authorization", "")
            token = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), key.encode()):
                return error_response(401, "invalid or missing API key")
        return None

    async def _read_body(self, receive):
        """(body, None), or (None, an error response), or (None, None) when the client
        went away. Counts bytes as they arrive; the whole body within --body-timeout-s."""
        limit, timeout = self.config.max_request_bytes, self.config.body_timeout_s
        deadline = time.monotonic() + timeout
        chunks, size, over = [], 0, False
        while True:
            left = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(left, 0.001))
            except asyncio.TimeoutError:
                if over:
                    break
                return None, error_response(
                    408, f"request body not received within {timeout:g} s (--body-timeout-s)"
                )
            if message["type"] == "http.disconnect":
                return None, None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit and not over:  # stop keeping it; drain a little, then answer
                over, chunks = True, []
                deadline = min(deadline, time.monotonic() + _DRAIN_SECONDS)
            if not over:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if over:
            return None, error_response(413, f"request body over {limit} bytes")
        return b"".join(chunks), None


def _replay(body: bytes, receive):
    """A `receive` that hands the buffered body over once, then the client's own
    (so a route still sees `http.disconnect` when the client goes away)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
