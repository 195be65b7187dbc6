"""The batched latent policy-gradient step as Triton kernels (CUDA, or CPU with TRITON_INTERPRET=1).

Same semantics as `kernels.reference.latent_pg_step_torch` (see there); never holds N x V
logits anywhere. Three passes over the LM head `W` [V, d], each shared by all N rows of
all requests (rows are tiled by BLOCK_N, so every W tile loaded serves BLOCK_N rows):

1. `_stats_kernel` on z: logits tiles `z W^T` [BLOCK_N, BLOCK_V] accumulated over d in
   fp32, online max, sum of exp and argmax per row. The grid splits the vocabulary into
   `splits` ranges so small N still fills the GPU; the per-split partials ([N, splits],
   tiny) are merged here.
2. `_expect_kernel`: each program recomputes one logits tile, turns it into
   probabilities with the merged max and sum, and atomically adds `p W_tile` into the
   fp32 accumulator `E` [N, d] (the scheme of Cut Cross-Entropy, Wijmans et al. 2024).
3. `_adam_kernel`: per row, `g = -reward (W_x - E)` and torch.optim.Adam's update of z,
   exp_avg, exp_avg_sq in place; then pass 1 again on the new z for its argmax.

Precision: accumulation is fp32 whatever the weight dtype. fp32 weights use "tf32x3"
dots (about fp32 accuracy on tensor cores); bf16/fp16 weights are multiplied with the
fp32 operand split into a high and a low half of the weight's dtype (two tensor-core dots,
about 16 mantissa bits). Under TRITON_INTERPRET=1 16-bit tiles are upcast to fp32 before
the dot instead: triton 3.9's interpreter multiplies the raw bits of bf16 operands (a
16x16 check gives errors of 1e10), so the split path runs on GPUs only.

Imports torch and triton only.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from kernels.reference import adam_bias_terms

BLOCK_N = 16
BLOCK_V = 64
BLOCK_D = 64


@triton.jit
def _dot_fp32(a, b, LOWP: tl.constexpr):
    """a [M, K] fp32 times b [K, N] (fp32, or a 16-bit dtype when LOWP) in fp32."""
    if LOWP:
        hi = a.to(b.dtype)
        lo = (a - hi.to(tl.float32)).to(b.dtype)
        return tl.dot(hi, b) + tl.dot(lo, b)
    return tl.dot(a, b.to(tl.float32), input_precision="tf32x3")


@triton.jit
def _logits_tile(
    z_ptr,
    w_ptr,
    rows,
    cols,
    n,
    v,
    d,
    LOWP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """fp32 logits z[rows] . W[cols]^T over all of d: [BLOCK_N, BLOCK_V]."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for k in range(0, d, BLOCK_D):
        ks = k + tl.arange(0, BLOCK_D)
        zt = tl.load(
            z_ptr + rows[:, None] * d + ks[None, :],
            mask=(rows[:, None] < n) & (ks[None, :] < d),
            other=0.0,
        )
        wt = tl.load(
            w_ptr + cols[None, :] * d + ks[:, None],
            mask=(cols[None, :] < v) & (ks[:, None] < d),
            other=0.0,
        )
        acc += _dot_fp32(zt, wt, LOWP)
    return acc


@triton.jit
def _stats_kernel(
    z_ptr,
    w_ptr,
    max_ptr,
    sum_ptr,
    arg_ptr,
    n,
    v,
    d,
    v_per_split,
    splits,
    LOWP: tl.constexpr,
    WANT_SUM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Per row and vocabulary split: max logit, sum exp(logit - max), argmax."""
    pid_n, split = tl.program_id(0), tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    run_max = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    run_arg = tl.zeros((BLOCK_N,), dtype=tl.int64)
    lo = split * v_per_split
    hi = tl.minimum(lo + v_per_split, v)
    for start in range(lo, hi, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        logits = _logits_tile(z_ptr, w_ptr, rows, cols, n, hi, d, LOWP, BLOCK_N, BLOCK_V, BLOCK_D)
        logits = tl.where(cols[None, :] < hi, logits, float("-inf"))
        tile_max, tile_arg = tl.max(logits, axis=1, return_indices=True)
        new_max = tl.maximum(run_max, tile_max)
        if WANT_SUM:
            run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(
                tl.exp(logits - new_max[:, None]), axis=1
            )
        run_arg = tl.where(tile_max > run_max, start + tile_arg.to(tl.int64), run_arg)
        run_max = new_max
    out = rows * splits + split
    tl.store(max_ptr + out, run_max, mask=rows < n)
    tl.store(arg_ptr + out, run_arg, mask=rows < n)
    if WANT_SUM:
        tl.store(sum_ptr + out, run_sum, mask=rows < n)


@triton.jit
def _expect_kernel(
    z_ptr,
    w_ptr,
    max_ptr,
    sum_ptr,
    e_ptr,
    n,
    v,
    d,
    LOWP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """E[rows] += softmax(z W^T)[rows, cols] @ W[cols] for one (row block, vocab block)."""
    pid_n, pid_v = tl.program_id(0), tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    logits = _logits_tile(z_ptr, w_ptr, rows, cols, n, v, d, LOWP, BLOCK_N, BLOCK_V, BLOCK_D)
    row_max = tl.load(max_ptr + rows, mask=rows < n, other=0.0)
    row_sum = tl.load(sum_ptr + rows, mask=rows < n, other=1.0)
    p = tl.exp(logits - row_max[:, None]) / row_sum[:, None]
    p = tl.where((cols[None, :] < v) & (rows[:, None] < n), p, 0.0)
    for k in range(0, d, BLOCK_D):
        ks = k + tl.arange(0, BLOCK_D)
        wt = tl.load(
            w_ptr + cols[:, None] * d + ks[None, :],
            mask=(cols[:, None] < v) & (ks[None, :] < d),
            other=0.0,
        )
        part = _dot_fp32(p, wt, LOWP)
        tl.atomic_add(
            e_ptr + rows[:, None] * d + ks[None, :],
            part,
            mask=(rows[:, None] < n) & (ks[None, :] < d),
        )


@triton.jit
def _adam_kernel(
    z_ptr,
    w_ptr,
    e_ptr,
    arg_ptr,
    reward_ptr,
    step_size_ptr,
    bias2_sqrt_ptr,
    m_ptr,
    v_ptr,
    d,
    beta1,
    beta2,
    eps,
    BLOCK_D: tl.constexpr,
):
    """One row: g = -reward (W[argmax] - E); Adam as torch.optim.Adam, in place.

    step_size = lr / (1 - beta1^step) and bias2_sqrt = sqrt(1 - beta2^step) per row, as
    torch computes them (in float64 on the host)."""
    row = tl.program_id(0)
    x = tl.load(arg_ptr + row)
    reward = tl.load(reward_ptr + row)
    step_size = tl.load(step_size_ptr + row)
    bias2_sqrt = tl.load(bias2_sqrt_ptr + row)
    for k in range(0, d, BLOCK_D):
        ks = k + tl.arange(0, BLOCK_D)
        mask = ks < d
        at = row * d + ks
        wx = tl.load(w_ptr + x * d + ks, mask=mask, other=0.0).to(tl.float32)
        grad = -reward * (wx - tl.load(e_ptr + at, mask=mask, other=0.0))
        m = tl.load(m_ptr + at, mask=mask, other=0.0) * beta1 + (1.0 - beta1) * grad
        s = tl.load(v_ptr + at, mask=mask, other=0.0) * beta2 + (1.0 - beta2) * grad * grad
        z = tl.load(z_ptr + at, mask=mask, other=0.0)
        z = z - step_size * m / (tl.sqrt(s) / bias2_sqrt + eps)
        tl.store(m_ptr + at, m, mask=mask)
        tl.store(v_ptr + at, s, mask=mask)
        tl.store(z_ptr + at, z, mask=mask)


@functools.cache
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _splits(n: int, v: int, device) -> int:
    """Vocabulary splits so that row blocks x splits fill the device (1 under the interpreter)."""
    if device.type != "cuda":
        return 1
    sms = _multiprocessors(device.index if device.index is not None else 0)
    row_blocks = triton.cdiv(n, BLOCK_N)
    return max(1, min(triton.cdiv(v, BLOCK_V), triton.cdiv(4 * sms, row_blocks)))


def _low_precision_dots(weight) -> bool:
    """Split-operand tensor-core dots for 16-bit weights, except under the interpreter."""
    return weight.dtype != torch.float32 and os.environ.get("TRITON_INTERPRET") != "1"


def _stats(z, weight, want_sum: bool):
    """Merged (max [N], sum [N] or None, argmax [N] int64) of the logits z W^T per row."""
    n, d = z.shape
    v = weight.shape[0]
    splits = _splits(n, v, z.device)
    v_per_split = triton.cdiv(triton.cdiv(v, splits), BLOCK_V) * BLOCK_V
    splits = triton.cdiv(v, v_per_split)
    part_max = torch.empty((n, splits), dtype=torch.float32, device=z.device)
    part_sum = torch.empty((n, splits), dtype=torch.float32, device=z.device)
    part_arg = torch.empty((n, splits), dtype=torch.int64, device=z.device)
    grid = (triton.cdiv(n, BLOCK_N), splits)
    _stats_kernel[grid](
        z,
        weight,
        part_max,
        part_sum,
        part_arg,
        n,
        v,
        d,
        v_per_split,
        splits,
        LOWP=_low_precision_dots(weight),
        WANT_SUM=want_sum,
        BLOCK_N=BLOCK_N,
        BLOCK_V=BLOCK_V,
        BLOCK_D=BLOCK_D,
    )
    row_max, best_split = part_max.max(dim=1)  # ties: the lowest split, i.e. lowest token id
    arg = part_arg.gather(1, best_split[:, None]).squeeze(1)
    total = None
    if want_sum:
        total = (part_sum * torch.exp(part_max - row_max[:, None])).sum(dim=1)
    return row_max, total, arg


def latent_pg_step_triton(
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
    """As `kernels.reference.latent_pg_step_torch`, with the Triton kernels above."""
    for name, t in (("z", z), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous float32")
    weight = weight.contiguous()
    n, d = z.shape
    v = weight.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=z.device)
    row_max, row_sum, arg = _stats(z, weight, want_sum=True)
    expected = torch.zeros_like(z)
    grid = (triton.cdiv(n, BLOCK_N), triton.cdiv(v, BLOCK_V))
    _expect_kernel[grid](
        z,
        weight,
        row_max,
        row_sum,
        expected,
        n,
        v,
        d,
        LOWP=_low_precision_dots(weight),
        BLOCK_N=BLOCK_N,
        BLOCK_V=BLOCK_V,
        BLOCK_D=BLOCK_D,
    )
    step_size, bias2_sqrt = adam_bias_terms(lr, step, beta1, beta2)
    _adam_kernel[(n,)](
        z,
        weight,
        expected,
        arg,
        reward.float().contiguous(),
        step_size,
        bias2_sqrt,
        exp_avg,
        exp_avg_sq,
        d,
        beta1,
        beta2,
        eps,
        BLOCK_D=128,
    )
    return _stats(z, weight, want_sum=False)[2]
