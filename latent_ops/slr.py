"""Stable Latent Reasoning (ALGORITHMS.md §2), `thoughts` layout: the per-loop maths and
the request program.

After the prompt, up to `max_loops` *thought* positions are appended one at a time, as
COCONUT's continuous thoughts. The input of loop t (t = 1..T) is

    x_t = feedback(h_{t-1}) + e_t + β·r_t

- h_{t-1}: the final-norm state of the previous position ([d]; h_0 is the last prompt
  position's), the state the LM head reads;
- feedback: `hidden` (h rescaled to the mean token-embedding norm), `soft` (Eᵀ softmax(W h / τ),
  the probability-weighted token embedding of CoT2 / Soft Thinking; usable without
  training) or `hybrid` (their average, a fixed gate of 0.5);
- e_t: sinusoidal timestep embedding of t scaled to `timestep_scale` × the mean embedding
  norm (0 = off: an untrained model has no use for it);
- r_t: the loop residual: `h0` (the last prompt token's embedding), `prev` (the previous
  loop's input x_{t-1}, x_0 = that embedding) or `none`.
Then the answer is decoded as usual, attending to prompt and thoughts through the KV cache.
Exit: after each loop the criterion (Huginn, arXiv 2502.05171) compares loop t with t-1:
`latent_diff` ‖h_t−h_{t−1}‖/‖h_t‖, `kl` KL(p_t‖p_{t−1}) of the next-token distributions,
`entropy` |H(p_t)−H(p_{t−1})|, each stopping below its threshold, or `argmax` (stop when the
argmax has not changed for `threshold` loops in a row).

With a trained adapter (`latent_ops/lora.py`, `latentserve train-slr`), loop t's pass runs
with that adapter's LoRA of loop t, and e_t goes through its timestep MLP.

Contrastive refinement (method `contrastive`, ALGORITHMS.md §3; Wang et al., arXiv
2506.08552) on this loop: after loop t's pass with the adapter (h_strong), the same input
runs through the frozen base model at the same position (h_weak; its KV is thrown away),
and the loop state becomes h_t = h_strong + g_t with g_t = γ g_{t-1} + (1-γ) η (h_strong −
h_weak), g_0 = 0. h_t is what the next loop's feedback, the exit criterion and (after the
last loop) the first answer token read; the KV cache keeps the strong pass's keys and
values. Where the paper is silent we chose: strong/weak = with/without our loop adapters
(the paper uses two checkpoints), the update applies to the final-norm state, and g starts
at zero per request. It costs one more forward pass per loop for those rows.

This module has the maths (`loop_input`, `ThoughtState`) and the program (`slr`); the
runner (`server/engine/runner.py`) runs the thought passes of all requests inside its
batched decode steps. Layout `recurrent` (the proposal's equations taken literally): the whole prompt loops.
Pass 0 is the plain prompt (its input is h_0, the prompt's embeddings); loop t runs the
prompt's positions again on x_t = loop_input(states of pass t−1) per position (the same
feedback, timestep and residual, with r = h_0 per position for `h0`), with loop t's LoRA,
in a fresh cache; the answer is decoded from the last loop's cache. Loop deltas and exit
criteria use the last prompt position.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import torch

from latent_ops.choices import ExitCriterion, Feedback, Layout, Residual
from latent_ops.latentseek import Refined
from latent_ops.program import Generate, SamplingParams
from latent_ops.telemetry import Trace

# SLRConfig fields a request sets by the same name (`latent.<field>`)
REQUEST_FIELDS = (
    "layout",
    "max_loops",
    "feedback",
    "residual",
    "beta",
    "timestep_scale",
    "eta",
    "gamma",
)


@dataclass
class SLRConfig:
    layout: Layout = "thoughts"
    max_loops: int = 4
    feedback: Feedback = "soft"
    residual: Residual = "none"
    beta: float = 0.1
    timestep_scale: float = 0.0
    temperature: float = 1.0  # τ of the soft feedback
    exit_criterion: ExitCriterion | None = None  # None: always run max_loops
    exit_threshold: float | None = None
    time_budget_ms: float | None = None
    return_trace: bool = False  # put the loop states' trajectory in the response
    report_progress: bool = False  # a progress event per loop (streamed requests)
    adapter: str | None = None  # a named LoopAdapter loaded at start-up (--slr-adapter)
    # contrastive refinement (ALGORITHMS.md §3): needs an adapter (strong) against the base
    contrastive: bool = False
    eta: float = 0.5
    gamma: float = 0.5


@dataclass
class Thoughts:
    """What the runner needs to run a sequence's thought loops (one per sequence)."""

    cfg: SLRConfig
    deadline: float | None = None


def timestep_embedding(t: int, d: int) -> torch.Tensor:
    """[d] unit-norm sinusoidal embedding of loop index t (transformer/diffusion style)."""
    half = d // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t * freqs
    emb = torch.cat([torch.sin(angles), torch.cos(angles), torch.zeros(d - 2 * half)])
    return emb / emb.norm()


def loop_input(cfg, t, latent, logprobs, anchor, prev_input, embed, embed_norm, adapter=None):
    """x_t, the input of loop t, for one row or a batch (differentiable; training uses it).

    latent: [..., d] final-norm state h_{t-1}; logprobs: [..., V] its next-token
    log-probabilities (read by `soft` and `hybrid` feedback only); anchor: [..., d] last prompt token's embedding; prev_input: x_{t-1}
    or None; embed: [V, d] token embeddings; adapter: a LoopAdapter (timestep MLP) or None.
    """
    parts = []
    if cfg.feedback in ("soft", "hybrid"):
        probs = torch.softmax(logprobs / cfg.temperature, dim=-1)
        parts.append((probs.to(embed.dtype) @ embed).float())
    if cfg.feedback in ("hidden", "hybrid"):
        norm = latent.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        parts.append(latent * (embed_norm / norm))
    x = sum(parts) / len(parts)
    if cfg.timestep_scale:
        e_t = timestep_embedding(t, x.shape[-1]).to(x)
        if adapter is not None:
            e_t = adapter.timestep_embedding(e_t)
        x = x + cfg.timestep_scale * embed_norm * e_t
    if cfg.residual == "h0":
        x = x + cfg.beta * anchor
    elif cfg.residual == "prev":
        x = x + cfg.beta * (prev_input if prev_input is not None else anchor)
    return x


@dataclass
class ThoughtState:
    """Runner-side state of one sequence's loops. Tensors are float32 on the model device.

    embed: [V, d] token embeddings; lm_head: [V, d]; anchor: [d] embedding of the last
    prompt token; embed_norm: mean token-embedding norm.
    """

    cfg: SLRConfig
    anchor: torch.Tensor
    embed_norm: float
    loops: int = 0
    prev_input: torch.Tensor | None = None
    prev_latent: torch.Tensor | None = None  # [d]
    prev_logprobs: torch.Tensor | None = None  # [V]
    same_argmax: int = 0
    deltas: list[float] = field(default_factory=list)  # relative latent change per loop
    criterion: list[float] = field(default_factory=list)  # exit criterion value per loop
    stopped_reason: str | None = None  # "max_loops" | "converged" | "time_budget"
    deadline: float | None = None  # time.monotonic()
    adapter: object = None  # latent_ops.lora.LoopAdapter: its timestep MLP
    g: torch.Tensor | float = 0.0  # contrastive: the accumulated update g_t ([d])
    trace: Trace = field(default_factory=Trace)  # latent telemetry of the loop states

    def next_input(self, embed: torch.Tensor) -> torch.Tensor:
        """x_{t+1} [d] from the state `observe` saw last; embed: [V, d] token embeddings."""
        self.prev_input = loop_input(
            self.cfg,
            self.loops + 1,
            self.prev_latent,
            self.prev_logprobs,
            self.anchor,
            self.prev_input,
            embed,
            self.embed_norm,
            self.adapter,
        )
        return self.prev_input

    def accumulate(self, strong: torch.Tensor, weak: torch.Tensor) -> None:
        """Contrastive: g_t = γ g_{t-1} + (1-γ) η (h_strong - h_weak); strong, weak: [d]."""
        cfg = self.cfg
        self.g = cfg.gamma * self.g + (1 - cfg.gamma) * cfg.eta * (strong - weak)

    def observe(self, latent: torch.Tensor, logits: torch.Tensor, now: float) -> bool:
        """Record loop t's state (latent [d], logits [V]); True when the loops are done.

        Called once for the prompt's last position (t = 0), then after every loop.
        """
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        self.trace.add(latent)
        if self.prev_latent is not None:
            self.loops += 1
            self.deltas.append(
                float((latent - self.prev_latent).norm() / latent.norm().clamp_min(1e-12))
            )
            value = self._criterion(logprobs)
            if value is not None:
                self.criterion.append(value)
        self.prev_latent, self.prev_logprobs = latent, logprobs
        cfg = self.cfg
        if self.loops >= cfg.max_loops:
            self.stopped_reason = "max_loops"
        elif self.criterion and self._converged(self.criterion[-1]):
            self.stopped_reason = "converged"
        elif self.deadline_passed(now):
            self.stopped_reason = "time_budget"
        return self.stopped_reason is not None

    def deadline_passed(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def _criterion(self, logprobs: torch.Tensor) -> float | None:
        name, prev = self.cfg.exit_criterion, self.prev_logprobs
        if name is None:
            return None
        if name == "latent_diff":
            return self.deltas[-1]
        if name == "kl":
            return float((logprobs.exp() * (logprobs - prev)).sum())
        if name == "entropy":
            entropy = -(logprobs.exp() * logprobs).sum()
            prev_entropy = -(prev.exp() * prev).sum()
            return float((entropy - prev_entropy).abs())
        same = int(logprobs.argmax()) == int(prev.argmax())
        self.same_argmax = self.same_argmax + 1 if same else 0
        return float(self.same_argmax)

    def _converged(self, value: float) -> bool:
        if self.cfg.exit_criterion == "argmax":
            return value >= self.cfg.exit_threshold
        return value < self.cfg.exit_threshold

    def summary(self) -> dict:
        return {
            "loops": self.loops,
            "stopped_reason": self.stopped_reason,
            "loop_deltas": [round(x, 6) for x in self.deltas],
            "exit_criterion": self.cfg.exit_criterion,
            "exit_values": [round(x, 6) for x in self.criterion],
            "trace": self.trace,  # the Trace itself; the program decides what is shown
        }


def slr(prompt_ids: list[int], params: SamplingParams, cfg: SLRConfig, clock=time.monotonic):
    """The SLR program: one `Generate` need whose sequence runs its thought loops first."""
    start = clock()
    deadline = None if cfg.time_budget_ms is None else start + cfg.time_budget_ms / 1000
    need = Generate(prompt_ids, replace(params), thoughts=Thoughts(cfg, deadline))
    [generation] = yield [need]
    info = dict(generation.thoughts or {"loops": 0, "stopped_reason": "max_loops"})
    trace = info.pop("trace", None)
    method = "contrastive" if cfg.contrastive else "slr"
    # `steps` counts loops, so the refinement_steps histogram covers SLR too
    out = Refined(generation, method, info["loops"], info["stopped_reason"], None, None, loops=info)
    if trace is not None:
        out.trace, out.return_trace = trace, cfg.return_trace
    out.refinement_tokens = info["loops"]  # thought positions: usage.refinement_tokens
    out.refinement_time_ms = (clock() - start) * 1000
    return out
