"""The batched latent policy-gradient step in plain torch: the CPU path and the references.

`latent_pg_step_torch` is the closed form, chunked over the vocabulary so memory stays
bounded (never N x V logits at once):
    x      = argmax(W z)                                 per row
    g      = -reward * (W_x - W^T softmax(W z))          gradient of -reward * log p(x | z)
    z      <- Adam(z, g)                                 torch.optim.Adam's exact formula
    return argmax(W z_new)
`latent_pg_step_autograd` computes the same with autograd and torch.optim.Adam, one
request at a time, as the paper's code does; tests and benchmarks compare against it.

Shapes: z, exp_avg, exp_avg_sq [N, d] float32 (updated in place); weight [V, d] (fp32,
bf16 or fp16; accumulation is fp32); reward, lr [N] float32; step [N] int (>= 1).
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK = 8192


def _logit_tiles(z: torch.Tensor, weight: torch.Tensor, chunk: int):
    """Yield (first vocabulary id, fp32 W tile [c, d], logits tile [N, c]) over the vocabulary."""
    for lo in range(0, weight.shape[0], chunk):
        w = weight[lo : lo + chunk].float()
        yield lo, w, z @ w.T


def softmax_stats(z: torch.Tensor, weight: torch.Tensor, chunk: int, want_sum: bool = True):
    """Per row of W z, tile by tile: (max [N], sum of exp(logit - max) [N] or None, argmax [N]).

    Online softmax: the running sum is rescaled whenever the running max grows. Ties keep the
    lowest index, as torch.argmax does.
    """
    n = z.shape[0]
    run_max = torch.full((n,), -float("inf"), device=z.device)
    run_sum = torch.zeros(n, device=z.device) if want_sum else None
    best_idx = torch.zeros(n, dtype=torch.long, device=z.device)
    for lo, _, logits in _logit_tiles(z, weight, chunk):
        val, idx = logits.max(dim=1)
        new_max = torch.maximum(run_max, val)
        if want_sum:
            rescale = torch.exp(run_max - new_max)
            run_sum = run_sum * rescale + torch.exp(logits - new_max[:, None]).sum(1)
        best_idx = torch.where(val > run_max, idx + lo, best_idx)
        run_max = new_max
    return run_max, run_sum, best_idx


def adam_bias_terms(lr, step, beta1: float, beta2: float):
    """Per row, as torch.optim.Adam computes them (float64, then float32):
    step size lr / (1 - beta1^step) [N] and sqrt(1 - beta2^step) [N]."""
    step64 = step.to(torch.float64)
    step_size = (lr.to(torch.float64) / (1 - beta1**step64)).float()
    return step_size, (1 - beta2**step64).sqrt().float()


@torch.no_grad()
def latent_pg_step_torch(
    z,
    weight,
    reward,
    lr,
    exp_avg,
    exp_avg_sq,
    step,
    beta1=0.9,
    beta2=0.999,
    eps=1e-8,
    chunk: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """One Adam step on -reward * log p(argmax) for every row; returns argmax(W z_new) [N]."""
    # pass 1: online softmax statistics and argmax over vocabulary tiles
    run_max, run_sum, best_idx = softmax_stats(z, weight, chunk)
    # pass 2: W^T p accumulated tile by tile
    expected = torch.zeros_like(z)
    for _, w, logits in _logit_tiles(z, weight, chunk):
        expected += (torch.exp(logits - run_max[:, None]) / run_sum[:, None]) @ w
    grad = -reward.float()[:, None] * (weight[best_idx].float() - expected)
    # Adam, as torch.optim.Adam (no weight decay, no amsgrad)
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_size, bias2_sqrt = adam_bias_terms(lr, step, beta1, beta2)
    denom = exp_avg_sq.sqrt() / bias2_sqrt[:, None] + eps
    z.sub_(step_size[:, None] * exp_avg / denom)
    # pass 3: argmax of the updated latents
    return softmax_stats(z, weight, chunk, want_sum=False)[2]


def latent_pg_step_autograd(
    z,
    weight,
    reward,
    lr,
    exp_avg,
    exp_avg_sq,
    step,
    beta1=0.9,
    beta2=0.999,
    eps=1e-8,
) -> torch.Tensor:
    """Reference: per row, autograd on -reward * log_softmax(W z)[argmax] + torch.optim.Adam.

    Adam state is carried in the given tensors so repeated calls continue one optimiser.
    """
    out = torch.empty(z.shape[0], dtype=torch.long, device=z.device)
    w = weight.float()
    for row in range(z.shape[0]):
        param = torch.nn.Parameter(z[row].detach().clone())
        opt = torch.optim.Adam([param], lr=float(lr[row]), betas=(beta1, beta2), eps=eps)
        opt.state[param] = {  # continue from the given state; Adam adds 1 to step
            "step": torch.tensor(float(step[row]) - 1),
            "exp_avg": exp_avg[row].clone(),
            "exp_avg_sq": exp_avg_sq[row].clone(),
        }
        logp = torch.log_softmax(w @ param, dim=-1)
        loss = -float(reward[row]) * logp[logp.argmax()]
        opt.zero_grad()
        loss.backward()
        opt.step()
        state = opt.state[param]
        with torch.no_grad():
            z[row] = param
            exp_avg[row] = state["exp_avg"]
            exp_avg_sq[row] = state["exp_avg_sq"]
            out[row] = (w @ param).argmax()
    return out
