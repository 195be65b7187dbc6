"""One request's latent update cannot fail another's (engine level, tiny model).

The two programs are advanced by hand on an engine that is not started, so their updates
land in one batched `latent_pg_step` call every time (through the HTTP server that is
left to timing)."""

from __future__ import annotations

import pytest
import torch

from latent_ops.latentseek import LatentUpdate
from server.engine import latent_updates as engine_module
from server.engine.build import build_engine
from server.engine.engine import _Request
from server.engine.interface import Done, Failed, RequestStats


def _update(reward: float, d: int, seed: int):
    """A program of one LatentUpdate on 3 seeded rows; returns (result, z after)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(3, d, generator=g)
    [tokens] = yield [LatentUpdate(z, torch.zeros_like(z), torch.zeros_like(z), reward, 0.1, 1)]
    return tokens, z


def _run_together(engine, programs) -> dict:
    events: dict = {}
    for i, program in enumerate(programs):
        rid = f"r{i}"
        req = _Request(rid, program, lambda ev, i=i: events.__setitem__(i, ev), RequestStats(rid))
        engine._requests[rid] = req
        engine._waiting += 1
        engine._advance(req, None)
    engine._pump()
    return events


@pytest.fixture
def engine(tiny_loaded):
    return build_engine(tiny_loaded, max_batch_size=4)


def _alone(engine, d):
    [event] = _run_together(engine, [_update(-1.0, d, seed=0)]).values()
    return event.output


def test_a_non_finite_update_fails_only_its_own_request(engine, tiny_loaded):
    d = tiny_loaded.model.config.hidden_size
    want_tokens, want_z = _alone(engine, d)
    calls = []
    real = engine_module.latent_pg_step

    def counting(z, *args, **kwargs):
        calls.append(z.shape[0])
        return real(z, *args, **kwargs)

    engine_module.latent_pg_step = counting
    try:
        # 3e38 is finite in float32, but its square in Adam's second moment is not
        events = _run_together(engine, [_update(-1.0, d, 0), _update(-3e38, d, 1)])
    finally:
        engine_module.latent_pg_step = real
    assert calls == [6]  # one batched call for both requests' rows
    good, bad = events[0], events[1]
    assert isinstance(good, Done) and isinstance(bad, Done)
    tokens, z = good.output
    assert torch.equal(tokens, want_tokens) and torch.allclose(z, want_z)
    result, z_bad = bad.output
    assert isinstance(result, FloatingPointError)
    assert torch.isfinite(z_bad).all()  # its rows were left as they were


def test_a_failing_batched_update_is_retried_per_request(engine, tiny_loaded, monkeypatch):
    d = tiny_loaded.model.config.hidden_size
    want_tokens, _ = _alone(engine, d)
    real = engine_module.latent_pg_step

    def poisoned(z, weight, rewards, *args, **kwargs):
        if (rewards == -7.0).any():
            raise ValueError("this row's update cannot be computed")
        return real(z, weight, rewards, *args, **kwargs)

    monkeypatch.setattr(engine_module, "latent_pg_step", poisoned)
    events = _run_together(engine, [_update(-1.0, d, 0), _update(-7.0, d, 1)])
    assert isinstance(events[0], Done), events[0]
    assert torch.equal(events[0].output[0], want_tokens)
    assert isinstance(events[1], Failed) and "cannot be computed" in str(events[1].error)
