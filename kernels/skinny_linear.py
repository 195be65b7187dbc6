"""A faster CPU matmul for linear layers fed a few rows (batched decode steps).

On this project's CPU machines (torch 2.13 with MKL on AMD EPYC, 2 threads), `F.linear`
on an fp32 input of 2 to 32 rows runs at half the memory bandwidth of one row: a decode
step of SmolLM2-135M at batch 2 to 4 took 113-137 ms against 63 ms at batch 1. The same
product computed as `W @ xᵀ` (then transposed back) takes another MKL path that streams
the weight once: 56-74 ms at batch 2 to 4, 108 ms against 135 ms at batch 8 (figures and
command in docs/PERFORMANCE.md).

`install(model)` makes every `nn.Linear` of a CPU float32 model use that product for 2 to
`MAX_ROWS` rows and `F.linear` otherwise. The weights are not copied or changed; results
equal `F.linear`'s up to fp32 summation order. It does nothing on other devices or dtypes
(GPUs have their own tuned GEMMs), leaves layers whose forward was already replaced
(a LoRA wrapper installed first keeps calling `F.linear`) and is safe to call twice.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

MAX_ROWS = 32  # measured up to batch 32 (docs/PERFORMANCE.md); prefill shapes keep F.linear


def skinny_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """F.linear(x, weight, bias) for x [..., K], weight [N, K] -> [..., N] (contiguous)."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if not (2 <= rows <= MAX_ROWS) or x.device.type != "cpu" or x.dtype != torch.float32:
        return F.linear(x, weight, bias)
    out = torch.mm(weight, x.reshape(rows, x.shape[-1]).t()).t().contiguous()  # [rows, N]
    if bias is not None:
        out += bias
    return out.view(*x.shape[:-1], weight.shape[0])


def _forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return skinny_linear(x, self.weight, self.bias)


def install(model: torch.nn.Module) -> int:
    """Route `model`'s CPU float32 linear layers through `skinny_linear`; returns how many."""
    count = 0
    for module in model.modules():
        if (
            isinstance(module, torch.nn.Linear)
            and "forward" not in vars(module)  # already wrapped (e.g. LoRA): leave it be
            and module.weight.device.type == "cpu"
            and module.weight.dtype == torch.float32
        ):
            module.forward = types.MethodType(_forward, module)
            count += 1
    return count


def uninstall(model: torch.nn.Module) -> None:
    """Give `model`'s linear layers back their class's forward (benchmarks compare both)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and "forward" in vars(module):
            del module.forward
