"""The batched latent update: every waiting `LatentUpdate` in one `latent_pg_step` call.

`run_latent_updates` concatenates the latent rows (and their Adam moments, rewards,
learning rates and step counts) of every request waiting on a `LatentUpdate`, runs one
`kernels.latent_pg_step` over them against the runner's LM head, and hands each request
its own slice back:
- a request whose rows are not all finite after the step (its reward or state broke
  them) gets a `FloatingPointError` as its result, and its rows stay as they were;
- otherwise its `z` and moments are updated in place and its result is the new argmax
  tokens (a CPU tensor [rows]).
If the batched call itself raises, each request is retried alone, so a failure fails
only the request that causes it.

It does not own requests or decide what happens next: results and failures go back
through the `resolve(owner, slot, result)` and `fail(owner, exc)` callbacks the engine
passes (server/engine/engine.py). Owners need only a `request_id` (for logs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from kernels import latent_pg_step
from latent_ops.program import LatentUpdate

log = logging.getLogger("latentserve.engine")

Item = tuple[Any, int, LatentUpdate]  # (owner, need slot, update)


def run_latent_updates(
    batch: list[Item],
    lm_head,
    *,
    resolve: Callable[[Any, int, Any], None],
    fail: Callable[[Any, BaseException], None],
    impl: str = "auto",
    on_update: Callable[[float, int], None] | None = None,
) -> None:
    """One `kernels.latent_pg_step` call for the latent rows of every item, isolated per
    owner when it fails. `on_update(seconds, rows)` times each batched call."""
    if not batch:
        return
    try:
        _update_batch(batch, lm_head, resolve, impl, on_update)
    except Exception as exc:  # noqa: BLE001 - isolate: each request's rows alone
        if len(batch) == 1:
            log.exception("latent update failed")
            fail(batch[0][0], exc)
            return
        log.warning("batched latent update failed (%s); retrying per request", exc)
        for item in batch:
            try:
                _update_batch([item], lm_head, resolve, impl, on_update)
            except Exception as alone:  # noqa: BLE001 - fails its own request only
                log.exception("latent update of %s failed", item[0].request_id)
                fail(item[0], alone)


def _update_batch(batch: list[Item], lm_head, resolve, impl, on_update) -> None:
    weight = lm_head.weight
    device = weight.device
    sizes = [u.z.shape[0] for _, _, u in batch]

    def cat(get):
        return torch.cat([get(u).to(device) for _, _, u in batch])

    def per_row(get, dtype):
        return torch.cat(
            [torch.full((n,), get(u), dtype=dtype) for (_, _, u), n in zip(batch, sizes)]
        ).to(device)

    z, m, v = cat(lambda u: u.z), cat(lambda u: u.exp_avg), cat(lambda u: u.exp_avg_sq)
    start = time.perf_counter()
    tokens = latent_pg_step(
        z,
        weight,
        per_row(lambda u: u.reward, torch.float32),
        per_row(lambda u: u.lr, torch.float32),
        m,
        v,
        per_row(lambda u: u.step, torch.long),
        impl=impl,
    )
    if on_update is not None:
        on_update(time.perf_counter() - start, z.shape[0])
    # per request: are all its rows finite after the step? (one host sync for all)
    finite = torch.stack(
        [
            torch.isfinite(zs).all() & torch.isfinite(ms).all() & torch.isfinite(vs).all()
            for zs, ms, vs in zip(z.split(sizes), m.split(sizes), v.split(sizes))
        ]
    ).tolist()
    for (owner, slot, u), zs, ms, vs, ts, ok in zip(
        batch, z.split(sizes), m.split(sizes), v.split(sizes), tokens.cpu().split(sizes), finite
    ):
        if not ok:  # its own reward or state broke it: its rows stay as they were
            resolve(owner, slot, FloatingPointError("latent update is not finite"))
            continue
        u.z.copy_(zs)
        u.exp_avg.copy_(ms)
        u.exp_avg_sq.copy_(vs)
        resolve(owner, slot, ts)
