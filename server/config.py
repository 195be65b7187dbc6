"""The server's settings: one typed pydantic model, the single source of every default.

CLI flags are generated from these fields (`server/cli.py`): the flag is the field name
in kebab case, its help is the field's description, its default the field's default.
A field may name an environment variable (`json_schema_extra={"env": ...}`) consulted
when the flag is absent. Nothing here loads a model or opens a socket.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from latent_ops.choices import RefinementPolicy


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field(
        "default",
        description="'default' (embedded SmolLM2-135M-Instruct), a transformers model "
        "directory, or a .gguf file",
    )
    served_model_name: str | None = Field(
        None, description="model id on /v1/models and in responses (default: from --model)"
    )
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to bind (0 picks a free one)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where the model runs; auto = cuda when available"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weight dtype; auto = float32 on CPU, bfloat16 on CUDA"
    )
    backend: Literal["hf", "vllm"] = Field(
        "hf",
        description="who decodes: hf (the torch runner) or vllm (vLLM decodes, torch keeps "
        "the latents; needs the vllm extra)",
    )
    vllm_kv_cache_gib: int = Field(
        2,
        ge=1,
        description="vllm backend: GiB for vLLM's KV cache (CPU or GPU; on CPU an "
        "exported VLLM_CPU_KVCACHE_SPACE wins)",
    )
    max_batch_size: int = Field(
        16, ge=1, le=4096, description="sequences decoded together in one batch"
    )
    max_queued_requests: int = Field(
        64, ge=0, description="requests allowed to wait for a batch slot; beyond it, 503"
    )
    max_model_len: int | None = Field(
        None, ge=1, description="context length in tokens (default: the model's)"
    )
    api_key: str | None = Field(
        None,
        description="require 'Authorization: Bearer KEY' on /v1/* (env LATENTSERVE_API_KEY)",
        json_schema_extra={"env": "LATENTSERVE_API_KEY"},
    )
    request_timeout: float | None = Field(
        None,
        gt=0,
        description="seconds a request may take; then it answers what it has "
        "(plain: finish_reason length; refinement: its best answer). Default: no limit",
    )
    drain_timeout: float = Field(
        30.0, ge=0, description="on SIGTERM, seconds in-flight requests get to finish"
    )
    metrics_api_key: str | None = Field(
        None,
        description="require 'Authorization: Bearer KEY' on /metrics "
        "(env LATENTSERVE_METRICS_API_KEY; default: /metrics is open)",
        json_schema_extra={"env": "LATENTSERVE_METRICS_API_KEY"},
    )
    max_request_bytes: int = Field(
        4 << 20, ge=1024, description="largest request body in bytes; beyond it, 413"
    )
    body_timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="seconds a client has to send its whole request body; then 408",
    )
    header_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="seconds a client has to send its request headers; then the connection "
        "is closed",
    )
    max_sequences_per_request: int = Field(
        64,
        ge=1,
        le=4096,
        description="largest number of sequences (prompts × n) one request may ask for; "
        "beyond it, 400",
    )
    max_samples: int = Field(
        32,
        ge=1,
        le=1024,
        description="largest latent.samples (best_of_n, self_consistency) or consistency "
        "reward samples a request may ask for",
    )
    max_refinement_steps: int = Field(
        50, ge=0, description="largest latent.max_steps a request may ask for"
    )
    max_loops: int = Field(
        16, ge=0, le=256, description="largest latent.max_loops an SLR request may ask for"
    )
    slr_adapter: list[str] = Field(
        default_factory=list,
        description="SLR loop adapters to load, NAME=DIR (from `latentserve train-slr`); "
        "requests pick one with latent.adapter",
    )
    speculative_steps: int = Field(
        3,
        ge=1,
        le=64,
        description="LatentSeek steps whose continuations decode together when the reward "
        "has one failing value (reference, regex); exact, trades wasted decoding after an "
        "early success for latency; 1 = off",
    )
    draft_tokens: int = Field(
        8,
        ge=0,
        le=64,
        description="draft-verified decoding: tokens a greedy sequence may draft per step "
        "from the answers its request already decoded (LatentSeek continuations) and, with "
        "--draft-prompt-lookup, from its prompt; verified in one pass, output unchanged; "
        "0 = off (server/engine/drafts.py)",
    )
    draft_budget: int = Field(
        32, ge=1, le=4096, description="drafted tokens per decode step over the whole batch"
    )
    draft_prompt_lookup: bool = Field(
        False,
        description="draft every greedy sequence from n-grams of its own prompt (as vLLM's "
        "ngram speculative method)",
    )
    refinement_yield_s: float = Field(
        30.0,
        ge=0,
        description="scheduling: a refining request's sequences wait for batch slots behind "
        "plain requests that arrived up to this many seconds after it (then by arrival); "
        "0 = first come, first served",
    )
    refinement_profile: list[str] = Field(
        default_factory=list,
        description="named latent specs a client selects by model id BASE:NAME: NAME=JSON, "
        "or a JSON/YAML file of NAME: spec (server/profiles.py)",
    )
    refinement_policy: RefinementPolicy = Field(
        "fixed",
        description="refinement budgets under load: fixed (as asked), or adaptive (scaled by "
        "load target / requests in the engine at admission, down to the request's "
        "latent.min_steps / min_samples; server/budgets.py)",
    )
    refinement_load_target: int | None = Field(
        None,
        ge=1,
        description="requests in the engine above which adaptive budgets shrink "
        "(default: --max-batch-size)",
    )
    max_time_budget_ms: float = Field(
        600_000.0, ge=0, description="largest latent.time_budget_ms a request may ask for"
    )
    verifier_max_tokens: int = Field(
        128, ge=1, le=4096, description="tokens each self-reward verifier may generate"
    )
    reward_url_allowlist: list[str] = Field(
        default_factory=list,
        description="URL prefixes (scheme://host[:port][/path]) a webhook reward may POST "
        "to; empty = webhook rewards refused",
    )
    reward_timeout_s: float = Field(
        10.0, gt=0, le=600, description="seconds a reward webhook has to answer in full"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="log verbosity"
    )
    enable_metrics: bool = Field(
        True, description="record Prometheus metrics and serve /metrics (off: 404)"
    )
    log_format: Literal["json", "text"] = Field(
        "json", description="log lines as JSON objects (with request ids) or plain text"
    )

    @property
    def adapter_dirs(self) -> dict[str, str]:
        """`slr_adapter` as name -> directory."""
        return dict(_name_and_dir(item) for item in self.slr_adapter)

    @field_validator("reward_url_allowlist")
    @classmethod
    def _allowlist_entries_normalise(cls, items: list[str]) -> list[str]:
        from latent_ops.urls import invalid_entries

        bad = invalid_entries(items)
        if bad:
            raise ValueError(f"entries that can never match (latent_ops/urls.py): {bad}")
        return items

    @field_validator("refinement_profile")
    @classmethod
    def _profiles_parse(cls, items: list[str]) -> list[str]:
        from server.profiles import parse_profiles

        parse_profiles(items)  # ValueError naming the bad profile, at start-up
        return items

    @property
    def profiles(self) -> dict[str, dict]:
        """`refinement_profile` as name -> latent spec."""
        from server.profiles import parse_profiles

        return parse_profiles(self.refinement_profile)

    @field_validator("slr_adapter")
    @classmethod
    def _adapters_exist(cls, items: list[str]) -> list[str]:
        from pathlib import Path

        for item in items:
            name, path = _name_and_dir(item)
            if not name or not path:
                raise ValueError(f"{item!r}: want NAME=DIR")
            if not (Path(path) / "adapter.json").is_file():
                raise ValueError(f"{path!r} holds no adapter.json (write one with train-slr)")
        return items


def _name_and_dir(item: str) -> tuple[str, str]:
    """'NAME=DIR' -> (NAME, DIR); a part that is missing is ''."""
    name, _, path = item.partition("=")
    return name, path
