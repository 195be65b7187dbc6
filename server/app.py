"""Build the FastAPI app (`build_app(config)`) and run it (`serve(config)`).

Importing this module loads nothing: the model, the runner and the engine thread are
created in the app's lifespan and torn down with it. Routes for the OpenAI API live in
`server/openai_routes.py`, the middleware in front of every route (request ids, keys,
body limits) in `server/middleware.py`, uvicorn's settings in `server/transport.py`; this
module holds the app-level parts: lifespan, `/health`, `/v1/models` and `/metrics`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from server.config import ServerConfig
from server.errors import error_response, install_error_handlers
from server.metrics import Metrics
from server.middleware import RequestContext
from server.profiles import model_ids
from server.protocol import ModelCard, ModelList, now
from server.transport import uvicorn_config

log = logging.getLogger("latentserve")


@dataclass
class ServerState:
    """What the routes need, set up in the lifespan (app.state.server)."""

    config: ServerConfig
    engine: object  # server.engine.engine.Engine
    tokenizer: object
    model_name: str
    max_model_len: int
    metrics: Metrics
    max_token_chars: int = 1 << 30  # the longest token's text: bounds a prompt's tokens
    profiles: dict | None = None  # refinement profiles by name (server/profiles.py)


def _load_state(config: ServerConfig, metrics: Metrics, loaded=None) -> ServerState:
    from server.engine.build import EngineConfig, build_engine
    from server.engine.loader import load_model

    if loaded is None:
        loaded = load_model(config.model, device=config.device, dtype=config.dtype)
    engine = build_engine(
        loaded,
        EngineConfig.from_server(config),
        on_finish=lambda stats: _finished(metrics if config.enable_metrics else None, stats),
        on_latent_update=metrics.record_latent_update if config.enable_metrics else None,
    )
    metrics.bind_engine(engine, _device_memory_fn(engine.runner.device, loaded.model))
    engine.start()
    return ServerState(
        config=config,
        engine=engine,
        tokenizer=loaded.tokenizer,
        model_name=config.served_model_name or loaded.name,
        max_model_len=engine.runner.max_model_len,
        metrics=metrics,
        max_token_chars=max_token_chars(loaded.tokenizer),
        profiles=config.profiles,
    )


def max_token_chars(tokenizer) -> int:
    """The most characters one token of `tokenizer` stands for (its vocabulary's longest
    entry; byte-level entries spell one character per byte, so this bounds the decoded
    text too), doubled for normalizers that drop characters. A text longer than
    max_model_len × this cannot fit the context, and is refused before tokenizing."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return 2 * max(1, max((len(p) for p in pieces if p), default=1))


def _finished(metrics: Metrics | None, stats) -> None:
    """Engine callback per finished request: metrics, then one structured log line."""
    if metrics is not None:
        metrics.record_request(stats)
    if not log.isEnabledFor(logging.INFO):
        return
    end = stats.finished or stats.arrival
    log.info(
        "request finished",
        extra={
            "request_id": stats.trace_id or stats.request_id,
            "method": stats.method,
            "outcome": stats.outcome,
            "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.completion_tokens,
            "refinement_tokens": stats.refinement_tokens,
            "latency_ms": round((end - stats.arrival) * 1000, 2),
            "refinement": stats.refinement,
        },
    )


def _device_memory_fn(device, model):
    import torch

    if device.type == "cuda":
        return lambda: torch.cuda.memory_allocated(device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return lambda: weights  # on the CPU: the weights we hold (the KV cache is transient)


def build_app(config: ServerConfig, loaded=None) -> FastAPI:
    """The app for `config`. `loaded` (a `LoadedModel`) skips loading in the lifespan."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import asyncio

        state = await asyncio.to_thread(_load_state, config, metrics, loaded)
        app.state.server = state
        log.info("serving %s (max_model_len %d)", state.model_name, state.max_model_len)
        try:
            yield
        finally:
            state.engine.shutdown()

    # No redirect from "/v1/completions/" to "/v1/completions": unknown paths are a JSON 404.
    app = FastAPI(title="latentserve", version="0.1.0", lifespan=lifespan, redirect_slashes=False)
    app.state.metrics = metrics
    install_error_handlers(app)

    app.add_middleware(RequestContext, config=config)

    @app.get("/health")
    async def health(request: Request):
        state = getattr(request.app.state, "server", None)
        if state is None or not state.engine.alive:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/models", response_model=ModelList)
    async def models(request: Request):
        state: ServerState = request.app.state.server
        ids = model_ids(state.model_name, state.profiles or {})
        created = now()
        return ModelList(
            data=[ModelCard(id=i, created=created, max_model_len=state.max_model_len) for i in ids]
        )

    @app.get("/metrics")
    async def metrics_route():
        if not config.enable_metrics:
            return error_response(404, "metrics are disabled (--no-enable-metrics)")
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    from server.openai_routes import router

    app.include_router(router)
    return app


class _DrainingServer(uvicorn.Server):
    """uvicorn, except that a drained shutdown exits 0: on SIGTERM or SIGINT it stops
    accepting, lets in-flight requests finish (up to --drain-timeout) and returns, where
    stock uvicorn re-raises the signal afterwards (exit status -15)."""

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(config: ServerConfig) -> int:
    """Run uvicorn in this process; a model that cannot load exits 1 with one line."""
    import sys

    from server import logs
    from server.engine.loader import ModelLoadError, load_model

    logs.configure(config.log_level, config.log_format)
    if config.backend == "vllm":
        from server.engine.vllm_runner import vllm_available

        if not vllm_available():
            print(
                "latentserve: error: --backend vllm needs the vllm extra: "
                "`make install-vllm` (or pip install '.[vllm]', see README)",
                file=sys.stderr,
            )
            return 1
    # Load before binding the port, so a bad --model is one line and exit status 1.
    try:
        loaded = load_model(config.model, device=config.device, dtype=config.dtype)
    except ModelLoadError as exc:
        print(f"latentserve: error: {exc}", file=sys.stderr)
        return 1
    _DrainingServer(uvicorn_config(build_app(config, loaded=loaded), config)).run()
    return 0
