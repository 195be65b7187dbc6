"""Development benchmarks, soak and backend comparisons (not packaged; run from the
repository root as `python -m benchmarks.NAME`, README.md here)."""
