"""latent_pg_step against autograd + torch.optim.Adam on irregular shapes, for both the
torch path and the Triton kernels (CPU tensors under TRITON_INTERPRET=1, set in conftest;
with LATENTSERVE_TEST_DEVICE=cuda, CUDA tensors and compiled kernels, as
benchmarks/gpu_check.sh runs them)."""

import os

import pytest
import torch

from kernels import latent_pg_step
from kernels.reference import latent_pg_step_autograd

TOL = {torch.float32: 1e-3, torch.bfloat16: 2e-2}
DEVICE = torch.device(os.environ.get("LATENTSERVE_TEST_DEVICE", "cpu"))


def _inputs(n, d, v, dtype, seed, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g)
    weight = (torch.randn(v, d, generator=g) / d**0.5).to(dtype)
    reward = -torch.rand(n, generator=g)  # rewards in [-1, 0)
    lr = 0.01 + 0.05 * torch.rand(n, generator=g)
    exp_avg = 0.01 * torch.randn(n, d, generator=g)
    exp_avg_sq = 0.001 * torch.rand(n, d, generator=g)
    step = torch.randint(1, 6, (n,), generator=g)
    fresh = step == 1  # a first step starts from zero Adam state
    exp_avg[fresh] = 0
    exp_avg_sq[fresh] = 0
    return tuple(a.to(device) for a in (z, weight, reward, lr, exp_avg, exp_avg_sq, step))


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n, d, v", [(1, 64, 1537), (7, 96, 4099), (33, 64, 4099)])
def test_matches_autograd_adam(n, d, v, dtype, impl):
    seed = n * 1_000_003 + d * 10_007 + v + (7 if dtype == torch.bfloat16 else 0)
    seed += 101 if impl == "triton" else 0  # fresh inputs per case
    args = _inputs(n, d, v, dtype, seed)
    ref = [a.clone() for a in args]
    ours = [a.clone() for a in args]
    z0 = args[0].clone()
    ref_tokens = latent_pg_step_autograd(*ref)
    # every entry must be overwritten
    poisoned = torch.full((n,), -7, dtype=torch.long, device=DEVICE)
    ours_tokens = latent_pg_step(*ours, impl=impl, out=poisoned)
    assert ours_tokens is poisoned
    update = (ref[0] - z0).norm(dim=1, keepdim=True).clamp_min(1e-12)
    err = (ours[0] - ref[0]).norm(dim=1, keepdim=True) / update
    assert err.max() <= TOL[dtype], err.max()
    for a, b in ((ours[4], ref[4]), (ours[5], ref[5])):  # Adam state
        torch.testing.assert_close(a, b, rtol=TOL[dtype], atol=1e-6)
    # tokens: argmax of the new latents, equal wherever the top-2 logits are not tied
    logits = ref[0] @ ref[1].float().T
    top2 = logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3
    assert torch.equal(ours_tokens[clear], ref_tokens[clear])
    assert (ours_tokens >= 0).all()


def test_unknown_impl_is_refused():
    with pytest.raises(ValueError):
        latent_pg_step(*_inputs(1, 64, 100, torch.float32, 0), impl="cuda-magic")


def test_auto_picks_torch_for_cpu_tensors(monkeypatch):
    import kernels.reference

    called = []
    real = kernels.reference.latent_pg_step_torch
    monkeypatch.setattr(
        "kernels.latent_pg_step_torch", lambda *a, **k: called.append(1) or real(*a, **k)
    )
    latent_pg_step(*_inputs(2, 64, 300, torch.float32, 1, device="cpu"))
    assert called == [1]


@pytest.mark.skipif(DEVICE.type != "cuda", reason="needs LATENTSERVE_TEST_DEVICE=cuda")
def test_auto_picks_triton_for_cuda_tensors(monkeypatch):
    monkeypatch.setattr("kernels.latent_pg_step_torch", lambda *a, **k: pytest.fail("torch"))
    assert latent_pg_step(*_inputs(2, 64, 300, torch.float32, 1)).is_cuda


def test_triton_refuses_non_contiguous_latents():
    args = list(_inputs(4, 64, 300, torch.float32, 2))
    args[0] = torch.randn(64, 4, device=DEVICE).T  # [4, 64], not contiguous
    with pytest.raises(ValueError, match="contiguous"):
        latent_pg_step(*args, impl="triton")
