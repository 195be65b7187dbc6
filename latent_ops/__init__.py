"""Test-time refinement methods written as step-wise programs, and their rewards.

Imports torch; never FastAPI, pydantic HTTP models or the scheduler. The kernels that run
its latent updates (`kernels/`) are called by the engine, not from here.
"""
