"""`POST /v1/completions` and `POST /v1/chat/completions`.

A route validates the request against the server's limits (model name, context length),
turns it into a program (`latent_ops.program`) with one `Generate` need per prompt and
choice, submits it to the engine and either waits for the result or streams it as
Server-Sent Events ending with `data: [DONE]`. A client that disconnects cancels its
request in the engine. Response shapes follow OpenAI's (see `server/protocol.py`).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from latent_ops.program import Generation
from server.engine.interface import Delta
from server.errors import APIError
from server.profiles import merged_latent, resolve
from server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    ErrorResponse,
    TopLogprob,
    new_id,
    now,
)
from server.refinement import PromptRecord, build_program, chat_encoder
from server.submission import (
    chunker,
    closing_chunks,
    finish_reason,
    progress_chunk,
    sse,
    streaming_response,
    submit,
    usage,
    wait,
)

router = APIRouter()
_ERRORS = {
    200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE with stream: true"},
    **{code: {"model": ErrorResponse} for code in (400, 401, 404, 408, 413, 500, 503)},
}


# ---- validation and request building ------------------------------------------------
def _state(request: Request):
    state = getattr(request.app.state, "server", None)
    if state is None or not state.engine.alive:
        raise APIError(503, "the engine is not ready")
    return state


def _model(body, state) -> str:
    """The model id to answer with; a profile's `BASE:NAME` puts its latent spec under the
    request's own `latent` fields (server/profiles.py); 404 for an unknown id."""
    profile = resolve(body.model, state.model_name, state.profiles or {})
    if profile is None:
        return state.model_name
    try:
        body.latent = merged_latent(profile, body.latent)
    except ValueError as exc:  # pydantic's ValidationError is one
        raise APIError(400, f"latent with the profile's fields: {exc}", param="latent") from exc
    return body.model


def _check_sequences(state, count: int) -> None:
    """400 when a request asks for more sequences (prompts × n) than the server allows."""
    limit = state.config.max_sequences_per_request
    if count > limit:
        raise APIError(
            400,
            f"this request asks for {count} sequences (prompts × n); the server's maximum "
            f"is {limit} (--max-sequences-per-request)",
            param="n",
        )


def _check_prompt_chars(state, texts: list[str], param: str) -> None:
    """400, before tokenizing, for text too long to fit the context in any tokenization:
    no token of this tokenizer spans more than `state.max_token_chars` characters."""
    limit = state.max_model_len * state.max_token_chars
    for text in texts:
        if len(text) > limit:
            raise APIError(
                400,
                f"This model's maximum context length is {state.max_model_len} tokens; a "
                f"prompt of {len(text)} characters cannot fit (at most {limit}).",
                param=param,
            )


async def _tokenize(state, texts: list[str], param: str, **kwargs) -> list[list[int]]:
    """Token ids per text, off the event loop; bounded by `_check_prompt_chars` first."""
    _check_prompt_chars(state, texts, param)
    tok = state.tokenizer
    return await asyncio.to_thread(lambda: [tok(t, **kwargs)["input_ids"] for t in texts])


def _budget(state, prompt_len: int, max_tokens: int | None, prompt_param: str) -> int:
    """The completion budget for one prompt; 400 when it cannot fit the context."""
    limit = state.max_model_len
    if prompt_len == 0:
        raise APIError(400, "the prompt is empty after tokenization", param=prompt_param)
    if prompt_len >= limit:
        raise APIError(
            400,
            f"This model's maximum context length is {limit} tokens; the prompt has "
            f"{prompt_len} tokens, leaving no room for a completion.",
            param=prompt_param,
        )
    if max_tokens is None:
        return limit - prompt_len
    if prompt_len + max_tokens > limit:
        raise APIError(
            400,
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} in "
            f"the completion). Please reduce the prompt or max_tokens.",
            param="max_tokens",
        )
    return max_tokens


# ---- /v1/completions -------------------------------------------------------------------
@router.post("/v1/completions", response_model=CompletionResponse, responses=_ERRORS)
async def completions(body: CompletionRequest, request: Request):
    state = _state(request)
    model = _model(body, state)
    texts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    _check_sequences(state, len(texts) * body.n)
    ids = await _tokenize(state, texts, "prompt")
    prompts = [
        PromptRecord(p, text, _budget(state, len(p), body.max_tokens, "prompt"))
        for p, text in zip(ids, texts)
    ]
    program, method = build_program(
        body,
        state.config,
        prompts,
        body.logprobs,
        chat_encoder(state.tokenizer),
        state.engine.adapters,
        load=state.engine.num_running + state.engine.num_waiting,
    )
    prompt_tokens = sum(len(p) for p in ids)
    sub = submit(request, state, program, method=method)
    rid, created, tok = new_id("cmpl"), now(), state.tokenizer

    def choice(i: int, r: Generation, text: str | None = None, finish=True) -> CompletionChoice:
        return CompletionChoice(
            index=i,
            text=r.text if text is None else text,
            finish_reason=finish_reason(r) if finish else None,
            logprobs=_completion_logprobs(tok, r.logprobs) if r.logprobs is not None else None,
        )

    if not body.stream:
        output = await wait(sub)
        return CompletionResponse(
            id=rid,
            created=created,
            model=model,
            choices=[choice(i, r) for i, r in enumerate(output.choices)],
            usage=usage(output, prompt_tokens, sub.stats),
            latent=output.summary(),
        )

    chunk = chunker(CompletionResponse, rid, created, model)

    def on_event(d: Delta):
        lp = _completion_logprobs(tok, d.logprobs) if d.logprobs is not None else None
        yield chunk([CompletionChoice(index=d.index, text=d.text, logprobs=lp)])

    def on_done(output):
        yield from closing_chunks(
            output,
            body,
            prompt_tokens,
            chunk,
            answer=lambda i, r: [chunk([choice(i, r, finish=False)])],
            finish=lambda i, r: CompletionChoice(index=i, text="", finish_reason=finish_reason(r)),
            stats=sub.stats,
        )

    return streaming_response(sse(sub, on_event, on_done, progress_chunk(chunk)))


def _completion_logprobs(tok, entries) -> CompletionLogprobs:
    out = CompletionLogprobs()
    for e in entries:
        out.tokens.append(tok.decode([e.token_id]))
        out.token_logprobs.append(e.logprob)
        out.top_logprobs.append({tok.decode([t]): lp for t, lp in e.top})
    return out


# ---- /v1/chat/completions -------------------------------------------------------------
@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=_ERRORS)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = _state(request)
    model = _model(body, state)
    _check_sequences(state, body.n)
    tok = state.tokenizer
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    # OpenAI's "developer" role is the system role of older chat templates
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in body.messages
    ]
    try:
        rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # noqa: BLE001 - templates reject some role orders
        raise APIError(400, f"messages cannot be rendered: {exc}", param="messages") from exc
    [ids] = await _tokenize(state, [rendered], "messages", add_special_tokens=False)
    max_tokens = body.max_completion_tokens or body.max_tokens
    budget = _budget(state, len(ids), max_tokens, "messages")
    k = (body.top_logprobs or 0) if body.logprobs else None
    question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), rendered)
    program, method = build_program(
        body,
        state.config,
        [PromptRecord(ids, question, budget)],
        k,
        chat_encoder(state.tokenizer),
        state.engine.adapters,
        load=state.engine.num_running + state.engine.num_waiting,
    )
    sub = submit(request, state, program, method=method)
    rid, created = new_id("chatcmpl"), now()

    if not body.stream:
        output = await wait(sub)
        choices = [
            ChatChoice(
                index=i,
                message=AssistantMessage(content=r.text),
                finish_reason=finish_reason(r),
                logprobs=_chat_logprobs(tok, r.logprobs) if r.logprobs is not None else None,
            )
            for i, r in enumerate(output.choices)
        ]
        return ChatCompletionResponse(
            id=rid,
            created=created,
            model=model,
            choices=choices,
            usage=usage(output, len(ids), sub.stats),
            latent=output.summary(),
        )

    started: set[int] = set()

    chunk = chunker(ChatCompletionChunk, rid, created, model)

    def delta(index: int, text: str, lp=None):
        if index not in started:
            started.add(index)
            yield chunk([ChatChunkChoice(index=index, delta=DeltaMessage(role="assistant"))])
        yield chunk([ChatChunkChoice(index=index, delta=DeltaMessage(content=text), logprobs=lp)])

    def on_event(d: Delta):
        lp = _chat_logprobs(tok, d.logprobs) if d.logprobs is not None else None
        yield from delta(d.index, d.text, lp)

    def on_done(output):
        yield from closing_chunks(
            output,
            body,
            len(ids),
            chunk,
            answer=lambda i, r: delta(i, r.text),
            finish=lambda i, r: ChatChunkChoice(
                index=i, delta=DeltaMessage(), finish_reason=finish_reason(r)
            ),
            stats=sub.stats,
        )

    return streaming_response(sse(sub, on_event, on_done, progress_chunk(chunk)))


def _chat_logprobs(tok, entries) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=tok.decode([e.token_id]),
                logprob=e.logprob,
                top_logprobs=[TopLogprob(token=tok.decode([t]), logprob=lp) for t, lp in e.top],
            )
            for e in entries
        ]
    )
