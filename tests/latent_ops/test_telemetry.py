"""latent_ops.telemetry.Trace: the three per-iteration measures."""

import pytest
import torch

from latent_ops.telemetry import Trace


def test_norms_drift_and_distance():
    trace = Trace()
    z0 = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    z1 = torch.tensor([[4.0, 3.0], [0.0, 2.0]])
    trace.add(z0)
    z0 *= 100  # the trace keeps a copy: later in-place updates do not rewrite history
    trace.add(z1)
    assert trace.norms == pytest.approx([3.5, 3.5])
    assert trace.cosine_drift == pytest.approx([(24 / 25 + 1) / 2])
    assert trace.distance == pytest.approx([0.0, (2**0.5) / (29**0.5)])
    summary = trace.summary()
    assert summary["points"] == [[1.5, 3.0], [2.0, 2.5]]
    assert "points" not in trace.summary(points=False)
