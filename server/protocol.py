"""OpenAI-compatible request and response models, plus the `latent` extension.

Requests are validated strictly (wrong JSON types are errors, NaN and infinities are
refused); unknown top-level fields are ignored as vLLM does, since OpenAI clients send
fields a server may not use. The models are the OpenAPI schema FastAPI publishes.
Validation against server limits that need the tokenizer or the config (context length)
happens in the routes, not here.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from latent_ops.choices import ExitCriterion, Feedback, Layout, Method, Residual, Select

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
_SURROGATE = re.compile("[\ud800-\udfff]")


def _encodable(value: str) -> str:
    """JSON may spell a lone UTF-16 surrogate ("\\udc00"): no tokenizer, log line or
    response can encode it as UTF-8, so it is refused where it enters, naming the field."""
    found = _SURROGATE.search(value)
    if found is not None:
        raise ValueError(
            f"text holds a lone UTF-16 surrogate (U+{ord(found.group()):04X}) at "
            f"character {found.start()}: not encodable as UTF-8"
        )
    return value


# Every free-text field of a request is a `Text`: a str that encodes as UTF-8.
Text = Annotated[str, AfterValidator(_encodable)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class ReferenceRewardSpec(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    type: Literal["reference"]
    reference_answer: Text = Field(min_length=1, max_length=256)


class RegexRewardSpec(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    type: Literal["regex"]
    pattern: Text = Field(min_length=1, max_length=512)


class SelfRewardSpec(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    type: Literal["self"]
    format: Literal["boxed"] | None = None


class WebhookRewardSpec(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    type: Literal["webhook"]
    url: Text = Field(min_length=1, max_length=2048)


class ArithmeticRewardSpec(BaseModel):
    """The programmatic verifier of worked arithmetic (latent_ops/arithmetic.py)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    type: Literal["arithmetic"]


class ConsistencyRewardSpec(BaseModel):
    """Agreement with `samples` sampled answers of the same prompt (latent_ops/sampling.py)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    type: Literal["consistency"]
    samples: int | None = Field(None, ge=1, description="default 5; at most --max-samples")
    temperature: FiniteFloat | None = Field(None, gt=0.0, le=2.0, description="default 0.7")


RewardSpec = Annotated[
    ReferenceRewardSpec
    | RegexRewardSpec
    | SelfRewardSpec
    | WebhookRewardSpec
    | ArithmeticRewardSpec
    | ConsistencyRewardSpec,
    Field(discriminator="type"),
]


class ExitSpec(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    criterion: ExitCriterion
    threshold: FiniteFloat = Field(ge=0.0)


class LatentSpec(BaseModel):
    """Per-request refinement (`latent_ops.choices.Method`). Unset fields take the
    method's defaults (`latent_ops.latentseek.LatentSeekConfig`,
    `latent_ops.slr.SLRConfig`, `DEFAULT_SAMPLES`); server flags cap them."""

    model_config = ConfigDict(strict=True, extra="forbid")
    method: Method = "none"
    max_steps: int | None = Field(None, ge=0)
    lr: FiniteFloat | None = Field(None, gt=0.0, le=10.0)
    fraction: FiniteFloat | None = Field(None, gt=0.0, le=1.0)
    max_update_tokens: int | None = Field(None, ge=1)
    threshold: FiniteFloat | None = None
    select: Select | None = None
    time_budget_ms: FiniteFloat | None = Field(None, ge=0.0)
    reward: RewardSpec | None = None
    # best_of_n, self_consistency, latentseek_best_of_n: samples drawn (at most
    # --max-samples; the hybrid draws them only when LatentSeek's answer fails the threshold)
    samples: int | None = Field(None, ge=1)
    # floors under --refinement-policy adaptive: budgets are never cut below them
    min_steps: int | None = Field(None, ge=0)
    min_samples: int | None = Field(None, ge=1)
    # SLR
    layout: Layout | None = None
    max_loops: int | None = Field(None, ge=0)
    exit: ExitSpec | None = None
    feedback: Feedback | None = None
    residual: Residual | None = None
    beta: FiniteFloat | None = Field(None, ge=0.0, le=10.0)
    timestep_scale: FiniteFloat | None = Field(None, ge=0.0, le=10.0)
    adapter: Text | None = Field(None, min_length=1, max_length=128)
    eta: FiniteFloat | None = Field(None, ge=0.0, le=100.0)
    gamma: FiniteFloat | None = Field(None, ge=0.0, le=1.0)
    return_trace: bool = False
    # the unrefined first answer and its reward beside the refined one (latent.baseline)
    return_baseline: bool = False


class _SamplingRequest(_Strict):
    model: Text | None = Field(None, description="served model id; omitted = the only one")
    temperature: FiniteFloat = Field(1.0, ge=0.0, le=2.0)
    top_p: FiniteFloat = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: (
        Annotated[Text, Field(min_length=1, max_length=256)]
        | Annotated[list[Annotated[Text, Field(min_length=1, max_length=256)]], Field(max_length=8)]
        | None
    ) = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Text | None = None
    latent: LatentSpec | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(_SamplingRequest):
    prompt: (
        Annotated[Text, Field(min_length=1)]
        | Annotated[list[Annotated[Text, Field(min_length=1)]], Field(min_length=1, max_length=64)]
    )
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)


class TextContentPart(_Strict):
    type: Literal["text"]
    text: Text


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


# ---- responses -----------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class RefinementUsage(BaseModel):
    """What a refined request did and cost (`usage.refinement`)."""

    forward_passes: int  # runner steps its sequences took part in
    generated_tokens: int  # every token its sequences decoded (answers, continuations,
    # samples, verifier answers)
    discarded_tokens: int  # decoded for speculated steps after the one that stopped
    latent_update_rows: int  # latent rows it updated, summed over steps
    reward_evaluations: int  # answers scored (a repeated text's score is reused)
    reward_tokens: int  # tokens its reward generated (self verifier, consistency samples)
    time_ms: dict[str, float]  # queue, decode, latent_update, reward, total


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    refinement_tokens: int = 0
    refinement: RefinementUsage | None = None  # refined requests only


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length", "abort"] | None = None
    logprobs: CompletionLogprobs | None = None


class LatentSummary(BaseModel):
    method: str
    steps: int
    stopped_reason: str
    initial_reward: float | None = None
    final_reward: float | None = None
    reward_history: list[float | None] = Field(default_factory=list)  # None: reward error
    update_tokens: int = 0
    refinement_time_ms: float = 0.0
    # best_of_n, self_consistency, latentseek_best_of_n (samples drawn)
    samples: int | None = None
    vote_share: float | None = None
    latentseek_candidates: int | None = None  # latentseek_best_of_n: LatentSeek's share
    # the budget granted: {policy, asked, granted, cut_reason} (server/budgets.py)
    budget: dict | None = None
    # with return_baseline: {"text", "reward"} of the first answer (null for SLR)
    baseline: dict | None = None
    # SLR
    loops: int | None = None
    loop_deltas: list[float] | None = None
    exit_criterion: str | None = None
    exit_values: list[float] | None = None
    trace: dict | None = None  # latent telemetry, with return_trace (latent_ops.telemetry)


class LatentProgress(BaseModel):
    """A streamed refinement's progress chunk (`choices` empty): `progress` holds the
    method, the `step`, `sample` or `loop` just finished, its `reward` (null where the
    method has none) and the `tokens` generated so far (SLR loops: the loop's `delta`)."""

    progress: dict


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    latent: LatentSummary | LatentProgress | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float


class ChatTokenLogprob(BaseModel):
    token: str
    logprob: float
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] = Field(default_factory=list)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "abort"] | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    latent: LatentSummary | LatentProgress | None = None


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    finish_reason: Literal["stop", "length", "abort"] | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    latent: LatentSummary | LatentProgress | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "latentserve"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | str | None = None
    request_id: str | None = None  # also the x-request-id header; the key to the logs


class ErrorResponse(BaseModel):
    error: ErrorInfo
