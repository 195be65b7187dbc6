"""Tensor ops for latent refinement: the batched latent policy-gradient update.

Imports torch (and triton, lazily, on CUDA) only; never `latent_ops` or `server`.

Name clash note: Hugging Face's hub library is also imported as `kernels`, and
transformers probes for it (`is_kernels_available`). Ours is not taken for it because the
probe requires a distribution version in [0.17, 0.18) and ours is latentserve's (0.1.x),
and because this module defines no `__version__`; `tests/test_packaging.py` checks both.
"""
