"""Test-time refinement methods written as step-wise programs, and their rewards.

Imports torch and `kernels`; never FastAPI, pydantic HTTP models or the scheduler.
"""
