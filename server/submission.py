"""Running one program for a route: submit it to the engine, then await its output or
stream its events as Server-Sent Events.

`submit` hands a program to the engine (503 when the queue is full or the engine dead);
`wait` awaits the output and cancels the request when the client goes away; `sse` turns
events into `data:` lines ending with `data: [DONE]` and cancels on disconnect;
`closing_chunks` and `chunker` build the chunks both routes end a stream with; `usage`
and `finish_reason` read a result the same way for both routes. This module knows no
route's request or response type beyond what a route passes in: validation and response
shapes stay in `server/openai_routes.py`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import StreamingResponse

from latent_ops.program import Generation
from server.engine.interface import (
    CancelledError,
    Delta,
    Done,
    EngineDead,
    Failed,
    Progress,
    QueueFull,
    RequestStats,
)
from server.errors import APIError, error_body
from server.protocol import LatentProgress, RefinementUsage, Usage


def usage(output, prompt_tokens: int, stats: RequestStats | None = None) -> Usage:
    """`usage` for a program's output; a refined one also gets the `refinement` object,
    from the output and the engine's `stats` of the request."""
    completion = sum(len(r.token_ids) for r in output.choices)
    refined = output.summary() is not None
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        total_tokens=prompt_tokens + completion,
        refinement_tokens=output.refinement_tokens,
        refinement=refinement_usage(output, stats) if refined and stats is not None else None,
    )


def refinement_usage(output, stats: RequestStats) -> RefinementUsage:
    """What a refinement did and cost: passes, tokens, latent rows, reward evaluations and
    wall time per phase (queue, decode, latent update, reward calls)."""
    times = stats.phase_seconds()
    return RefinementUsage(
        forward_passes=stats.forward_passes,
        generated_tokens=stats.generated_tokens,
        discarded_tokens=output.discarded_tokens,
        latent_update_rows=stats.latent_update_rows,
        reward_evaluations=output.reward_evaluations,
        reward_tokens=output.reward_tokens,
        time_ms={phase: round(s * 1000, 3) for phase, s in times.items()},
    )


def finish_reason(r: Generation) -> str:
    return "length" if r.finish_reason == "deadline" else r.finish_reason  # cut short


@dataclass
class Submission:
    request_id: str
    events: asyncio.Queue
    engine: object
    stats: RequestStats  # the engine fills it in; final once the output arrives
    http: Request  # the client's request (is it still connected?)


def submit(request: Request, state, program, method: str) -> Submission:
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    # The engine keys requests by an id we make: a client's x-request-id need not be unique.
    rid = f"{request.state.request_id}-{uuid.uuid4().hex[:8]}"

    def sink(event) -> None:
        loop.call_soon_threadsafe(events.put_nowait, event)

    stats = RequestStats(request_id=rid, method=method, trace_id=request.state.request_id)
    try:
        state.engine.submit(rid, program, sink, stats)
    except QueueFull as exc:
        state.metrics.admission_rejections.labels(reason="queue_full").inc()
        raise APIError(
            503, f"server is at capacity ({exc}); retry later", headers={"Retry-After": "1"}
        ) from exc
    except EngineDead as exc:
        raise APIError(503, "the engine is not running") from exc
    return Submission(rid, events, state.engine, stats, request)


async def next_event(sub: Submission):
    """The request's next engine event, or None once its client has gone away (checked
    every quarter of a second while no event comes)."""
    while True:
        try:
            return await asyncio.wait_for(sub.events.get(), timeout=0.25)
        except TimeoutError:
            if await sub.http.is_disconnected():
                return None


async def wait(sub: Submission):
    """Await the program's output; cancel the request if the client goes away."""
    try:
        while True:
            event = await next_event(sub)
            if event is None:
                sub.engine.cancel(sub.request_id)
                raise APIError(499, "client disconnected")
            if isinstance(event, Done):
                return event.output
            if isinstance(event, Failed):
                raise as_api_error(event.error, sub.request_id)
    except asyncio.CancelledError:
        sub.engine.cancel(sub.request_id)
        raise


def as_api_error(error: BaseException, rid: str) -> APIError:
    if isinstance(error, CancelledError):
        return APIError(499, "request cancelled")
    return APIError(500, f"generation failed: {type(error).__name__} (request id {rid})")


async def sse(
    sub: Submission, on_event: Callable, on_done: Callable, on_progress: Callable | None = None
) -> AsyncIterator[str]:
    """Stream chunks built by `on_event(Delta)`, `on_progress(info)` and `on_done(output)`;
    cancel the request when the client goes away (noticed within a quarter of a second even
    while nothing is being sent, e.g. during a refinement step)."""
    finished = False
    try:
        while True:
            event = await next_event(sub)
            if event is None:
                return  # `finally` cancels the request
            if isinstance(event, Delta):
                for chunk in on_event(event):
                    yield f"data: {chunk}\n\n"
            elif isinstance(event, Progress):
                if on_progress is not None:
                    yield f"data: {on_progress(event.info)}\n\n"
            elif isinstance(event, Done):
                for chunk in on_done(event.output):
                    yield f"data: {chunk}\n\n"
                break
            elif isinstance(event, Failed):
                err = as_api_error(event.error, sub.request_id)
                yield f"data: {json.dumps(error_body(err.status, err.message))}\n\n"
                break
        finished = True
        yield "data: [DONE]\n\n"
    finally:
        if not finished:  # the client went away mid-stream
            sub.engine.cancel(sub.request_id)


def closing_chunks(output, body, prompt_tokens: int, chunk, answer, finish, stats=None):
    """The chunks that end a stream, for both routes: a refined answer's text (it streams
    once refinement ends: `answer(i, generation)` gives its chunks), each choice's finish
    reason with the latent summary (`finish(i, generation)` gives the choice), then usage
    when `stream_options.include_usage` asks for it."""
    latent = output.summary()
    for i, r in enumerate(output.choices):
        if latent is not None:
            yield from answer(i, r)
        yield chunk([finish(i, r)], latent=latent)
    if body.stream_options and body.stream_options.include_usage:
        yield chunk([], usage=usage(output, prompt_tokens, stats))


def progress_chunk(chunk):
    """info -> a progress chunk: no choices (OpenAI clients skip it), `latent.progress`."""
    return lambda info: chunk([], latent=LatentProgress(progress=info))


def chunker(cls, rid: str, created: int, model: str):
    """chunk(choices, usage=None, latent=None) -> JSON of one stream chunk of type `cls`;
    `usage` and `latent` appear only on the chunks that carry them."""

    def chunk(choices, usage=None, latent=None) -> str:
        resp = cls(
            id=rid, created=created, model=model, choices=choices, usage=usage, latent=latent
        )
        return resp.model_dump_json(
            exclude={k for k in ("usage", "latent") if getattr(resp, k) is None}
        )

    return chunk


def streaming_response(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
