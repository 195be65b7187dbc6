"""Tensor ops for latent refinement: the batched latent policy-gradient update.

`latent_pg_step` is the one call the LatentSeek engine makes per step for the latent rows
of all refining requests. `impl`: "auto" (Triton on CUDA, torch elsewhere), "torch"
(closed form, chunked over V: `kernels/reference.py`), "triton" (`kernels/latent_update.py`;
on CPU tensors under TRITON_INTERPRET=1, which is how CI tests it).

Imports torch (and triton, lazily); never `latent_ops` or `server`.

Name clash note: Hugging Face's hub library is also imported as `kernels`, and
transformers probes for it (`is_kernels_available`). Ours is not taken for it because the
probe requires a distribution version in [0.17, 0.18) and ours is latentserve's (0.1.x),
and because this module defines no `__version__`; `tests/test_packaging.py` checks both.
"""

from __future__ import annotations

from kernels.reference import latent_pg_step_torch

IMPLS = ("auto", "torch", "triton")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def latent_pg_step(
    z, weight, reward, lr, exp_avg, exp_avg_sq, step, *, impl="auto", out=None, **adam
):
    """Adam step on -reward * log softmax(W z)[argmax] per row; returns argmax(W z_new).

    z, exp_avg, exp_avg_sq: [N, d] float32, updated in place. weight: [V, d] LM head.
    reward, lr: [N] float32. step: [N] int64 (>= 1, for bias correction). Returns [N] int64
    (written into `out` when given). `adam`: beta1 (0.9), beta2 (0.999), eps (1e-8), as
    torch.optim.Adam. `impl`: "auto" = Triton on CUDA tensors, torch elsewhere; "triton"
    on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported.
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown latent_pg_step impl {impl!r} (available: {', '.join(IMPLS)})")
    if impl == "auto":
        impl = "triton" if z.is_cuda and triton_available() else "torch"
    if impl == "triton":
        from kernels.latent_update import latent_pg_step_triton as fn
    else:
        fn = latent_pg_step_torch
    tokens = fn(z, weight, reward, lr, exp_avg, exp_avg_sq, step, **adam)
    if out is not None:
        out.copy_(tokens)
        return out
    return tokens
