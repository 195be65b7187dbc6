"""`latentserve eval`'s options: one pydantic model, the CLI flags and the report's `config`.

The defaults of LatentSeek's fields are the method's own (`LatentSeekConfig`); `--compare`'s
fields are read by `server/tools/frontier.py`. This module only declares and checks them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from latent_ops.choices import SAMPLED_METHODS, Feedback, Method, Residual, Select
from latent_ops.latentseek import LatentSeekConfig

_LS = LatentSeekConfig()


class EvalConfig(BaseModel):
    data: str = Field(description="a GSM8K-format JSONL file, or synthetic:N[,seed=S][,steps=A-B]")
    method: Method = Field("latentseek", description="refinement")
    reward: Literal["reference", "self", "arithmetic", "consistency"] = Field(
        "reference", description="LatentSeek reward"
    )
    limit: int | None = Field(None, ge=1, description="first N problems only")
    out: str = Field("eval-report.json", description="JSON report; the plot goes beside it")
    url: str | None = Field(None, description="a running server instead of the in-process engine")
    model: str = Field("default", description="model (in-process), as for serve")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="device (in-process)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="dtype")
    max_batch_size: int = Field(16, ge=1, description="sequences decoded together")
    concurrency: int = Field(16, ge=1, description="requests in flight with --url")
    max_tokens: int = Field(96, ge=1, description="answer tokens per problem")
    # LatentSeek's defaults are the method's own (latent_ops.latentseek.LatentSeekConfig)
    max_steps: int = Field(_LS.max_steps, ge=0, description="LatentSeek step budget")
    lr: float = Field(_LS.lr, gt=0, description="LatentSeek learning rate")
    fraction: float = Field(_LS.fraction, gt=0, le=1, description="LatentSeek fraction of latents")
    threshold: float = Field(_LS.threshold, description="LatentSeek stops when reward > threshold")
    select: Select = Field(_LS.select, description="answer returned")
    verifier_max_tokens: int = Field(64, ge=1, description="self-reward verifier tokens")
    max_loops: int | None = Field(
        None, ge=0, description="SLR loops (default: 4, or the adapter's)"
    )
    feedback: Feedback | None = Field(None, description="SLR feedback")
    residual: Residual | None = Field(None, description="SLR loop residual")
    beta: float | None = Field(None, ge=0, description="SLR residual weight")
    timestep_scale: float | None = Field(None, ge=0, description="SLR timestep embedding scale")
    slr_adapter: str | None = Field(
        None,
        description="SLR loop adapter directory (train-slr); in process it is loaded as "
        "'eval', with --url name one the server loaded as NAME=DIR",
    )
    eta: float | None = Field(None, ge=0, description="contrastive step size")
    gamma: float | None = Field(None, ge=0, le=1, description="contrastive momentum")
    api_key: str | None = Field(None, description="bearer key for --url")
    compare: str | None = Field(
        None,
        description="compare methods on accuracy against generated tokens, e.g. "
        "'none,latentseek/arithmetic@10,best_of_n/arithmetic@8,self_consistency@8' "
        "(server/tools/frontier.py); --method and --reward are then unused",
    )
    sample_temperature: float = Field(
        0.7, gt=0, le=2, description="--compare: temperature of best_of_n/self_consistency"
    )
    consistency_samples: int = Field(
        5, ge=1, description="--compare: samples of the consistency reward"
    )
    records: str | None = Field(
        None, description="--compare: per-problem candidates, rewards and costs (JSON lines)"
    )

    @model_validator(mode="after")
    def _sampled_methods_run_in_compare(self):
        if self.compare is None and self.method in SAMPLED_METHODS:
            raise ValueError(
                f"--method {self.method} samples: run it with --compare "
                f"'{self.method}{'' if self.method == 'self_consistency' else '/arithmetic'}@8' "
                "(accuracy at every sample budget)"
            )
        return self
