"""Putting an engine together, and running programs on one without HTTP.

- `EngineConfig`: the engine's settings (batch size, context length, queue bound, SLR
  adapters, backend); `EngineConfig.from_server(server_config)` for the server.
- `build_engine(loaded, config, ...)`: a runner (the torch `ModelRunner`, with SLR loop
  adapters when given, wrapped in a `VLLMRunner` for `backend="vllm"`) and an `Engine`
  over it, not started.
- `eos_token_ids(model, tokenizer)`: every end-of-sequence id the model's configs and
  tokenizer name.
- `run_programs(engine, programs)`: submit programs to a started engine and wait for
  their outputs (the evaluation tool, benchmarks, tests).

It does not load models (server/engine/loader.py), start or stop the engine, or serve
HTTP (server/app.py).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from server.config import ServerConfig
from server.engine.drafts import Drafter
from server.engine.engine import Engine
from server.engine.interface import Done, Failed, RequestStats
from server.engine.runner import ModelRunner

_SERVER = ServerConfig.model_fields


@dataclass(frozen=True)
class EngineConfig:
    """The settings `build_engine` needs (the server's come from `ServerConfig`)."""

    max_batch_size: int = 8
    max_model_len: int | None = None  # capped at the model's own context length
    max_queued_requests: int = 64
    slr_adapters: dict[str, str] | None = None  # name -> directory (`latentserve train-slr`)
    backend: str = "hf"  # "hf" (torch decodes) or "vllm" (server/engine/vllm_runner.py)
    vllm_kv_cache_gib: int = 2
    latent_impl: str = "auto"  # kernels.latent_pg_step's impl
    # draft-verified decoding (server/engine/drafts.py); defaults: the server flags'
    draft_tokens: int = _SERVER["draft_tokens"].default  # 0 = off
    draft_budget: int = _SERVER["draft_budget"].default
    draft_prompt_lookup: bool = _SERVER["draft_prompt_lookup"].default
    refinement_yield_s: float = _SERVER["refinement_yield_s"].default

    @classmethod
    def from_server(cls, config) -> EngineConfig:
        """The engine's part of a `server.config.ServerConfig`."""
        return cls(
            max_batch_size=config.max_batch_size,
            max_model_len=config.max_model_len,
            max_queued_requests=config.max_queued_requests,
            slr_adapters=config.adapter_dirs,
            backend=config.backend,
            vllm_kv_cache_gib=config.vllm_kv_cache_gib,
            draft_tokens=config.draft_tokens,
            draft_budget=config.draft_budget,
            draft_prompt_lookup=config.draft_prompt_lookup,
            refinement_yield_s=config.refinement_yield_s,
        )


def build_engine(
    loaded,
    config: EngineConfig | None = None,
    *,
    on_finish: Callable[[RequestStats], None] | None = None,
    on_latent_update: Callable[[float, int], None] | None = None,
    **settings,
) -> Engine:
    """A runner and an engine (not started) for a `LoadedModel`.

    `settings` override fields of `config` (e.g. `build_engine(loaded, max_batch_size=4)`).
    The context length is the smaller of `max_model_len` and the model's own. With
    `backend="vllm"`, vLLM decodes and torch keeps the latents; vLLM loads `loaded.path`
    itself. `on_finish` gets each request's `RequestStats`; `on_latent_update` gets
    (seconds, rows) per batched latent update.
    """
    cfg = replace(config or EngineConfig(), **settings)
    model, tok = loaded.model, loaded.tokenizer
    model_len = getattr(model.config, "max_position_embeddings", None) or 2048
    runner = ModelRunner(
        model,
        max_batch_size=cfg.max_batch_size,
        max_model_len=min(cfg.max_model_len or model_len, model_len),
        eos_token_ids=eos_token_ids(model, tok),
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
        drafter=Drafter(cfg.draft_tokens, cfg.draft_budget, cfg.draft_prompt_lookup)
        if cfg.draft_tokens
        else None,
    )
    if cfg.slr_adapters:
        from latent_ops.lora import LoopAdapter, LoRABank

        bank = LoRABank()
        device = next(model.parameters()).device
        for name, path in cfg.slr_adapters.items():
            adapter = LoopAdapter.load(path, model).to(device).requires_grad_(False)
            bank.add(name, adapter)
        bank.install(model)
        runner.lora = bank
    if cfg.backend == "vllm":
        from server.engine.vllm_runner import VLLMRunner

        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        runner = VLLMRunner(
            runner, str(loaded.path), dtype=dtype, kv_cache_gib=cfg.vllm_kv_cache_gib
        )
    elif cfg.backend != "hf":
        raise ValueError(f"unknown backend {cfg.backend!r}: hf or vllm")
    return Engine(
        runner,
        tok,
        max_queued_requests=cfg.max_queued_requests,
        on_finish=on_finish,
        on_latent_update=on_latent_update,
        latent_impl=cfg.latent_impl,
        refinement_yield_s=cfg.refinement_yield_s,
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
