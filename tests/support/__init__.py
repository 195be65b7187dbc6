"""Helpers for tests and benchmarks: real servers (`live`) and the paper-pattern LatentSeek
(`paper_reference`). Not packaged."""
