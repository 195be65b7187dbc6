"""Driving a `ModelRunner` by hand in tests: sequences join at given steps."""

from __future__ import annotations


def run_with_joins(runner, seqs, join_at):
    """Add seqs[i] at runner step join_at[i]; step until all finish. Returns seqs."""
    step = 0
    pending = sorted(zip(join_at, range(len(seqs))))
    while pending or runner.has_work:
        while pending and pending[0][0] <= step:
            runner.add(seqs[pending.pop(0)[1]])
        runner.step()
        step += 1
    return seqs
