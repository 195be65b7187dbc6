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


def _argmax_rows(z: torch.Tensor, weight: torch.Tensor, chunk: int) -> torch.Tensor:
    """argmax(W z) per row [N], tile by tile."""
    best_val = torch.full((z.shape[0],), -float("inf"), device=z.device)
    best_idx = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
    for lo, _, logits in _logit_tiles(z, weight, chunk):
        val, idx = logits.max(dim=1)
        better = val > best_val  # strict: ties keep the lowest index, as torch.argmax
        best_val = torch.where(better, val, best_val)
        best_idx = torch.where(better, idx + lo, best_idx)
    return best_idx


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
    n = z.shape[0]
    # pass 1: online softmax statistics and argmax over vocabulary tiles
    run_max = torch.full((n,), -float("inf"), device=z.device)
    run_sum = torch.zeros(n, device=z.device)
    best_idx = torch.zeros(n, dtype=torch.long, device=z.device)
    for lo, _, logits in _logit_tiles(z, weight, chunk):
        val, idx = logits.max(dim=1)
        new_max = torch.maximum(run_max, val)
        rescale = torch.exp(run_max - new_max)
        run_sum = run_sum * rescale + torch.exp(logits - new_max[:, None]).sum(1)
        best_idx = torch.where(val > run_max, idx + lo, best_idx)
        run_max = new_max
    # pass 2: W^T p accumulated tile by tile
    expected = torch.zeros_like(z)
    for _, w, logits in _logit_tiles(z, weight, chunk):
        expected += (torch.exp(logits - run_max[:, None]) / run_sum[:, None]) @ w
    grad = -reward.float()[:, None] * (weight[best_idx].float() - expected)
    # Adam, as torch.optim.Adam (no weight decay, no amsgrad)
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_f = step.to(torch.float64)
    bias1 = (1 - beta1**step_f).float()[:, None]
    bias2_sqrt = (1 - beta2**step_f).sqrt().float()[:, None]
    denom = exp_avg_sq.sqrt() / bias2_sqrt + eps
    z.sub_(lr.float()[:, None] / bias1 * exp_avg / denom)
    # pass 3: argmax of the updated latents
    return _argmax_rows(z, weight, chunk)


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
