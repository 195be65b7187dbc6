"""Latent telemetry (ALGORITHMS.md §4): how far and how straight refinement moves latents.

A `Trace` records one request's latent trajectory, one point per iteration (LatentSeek:
the updated answer latents, initial ones first; SLR: the loop states, the prompt's last
state first). Per point it keeps
- `norms`: mean L2 norm of the point's rows,
- `cosine_drift`: mean cosine similarity of each row with the same row one iteration
  before (1 = the direction did not change; first point: none),
- `distance`: ‖z_k − z_0‖ / ‖z_0‖ over all rows (how far from where it started),
- `points`: the mean row (kept as a [d] tensor; a list only in `summary`) for 2-D plots
  (`latentserve telemetry-plot`).
It only measures: no model, no HTTP. The values go into the response's `latent.trace`
when a request sets `return_trace`, and into the `latentserve:latent_*` histograms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Trace:
    norms: list[float] = field(default_factory=list)
    cosine_drift: list[float] = field(default_factory=list)
    distance: list[float] = field(default_factory=list)
    points: list[torch.Tensor] = field(default_factory=list)  # [d] each
    _first: torch.Tensor | None = None
    _last: torch.Tensor | None = None

    def add(self, z: torch.Tensor) -> None:
        """z: [d] or [U, d] latents of one iteration (copied; the caller may update z)."""
        z = z.detach().float().reshape(-1, z.shape[-1]).cpu().clone()
        self.norms.append(float(z.norm(dim=-1).mean()))
        if self._last is not None and self._last.shape == z.shape:
            self.cosine_drift.append(
                float(torch.nn.functional.cosine_similarity(z, self._last, dim=-1).mean())
            )
        if self._first is None:
            self._first = z
        if self._first.shape == z.shape:
            base = float(self._first.norm()) or 1.0
            self.distance.append(float((z - self._first).norm()) / base)
        self._last = z
        self.points.append(z.mean(0))

    def summary(self, points: bool = True) -> dict:
        out = {
            "norms": [round(x, 5) for x in self.norms],
            "cosine_drift": [round(x, 6) for x in self.cosine_drift],
            "distance": [round(x, 6) for x in self.distance],
        }
        if points:
            out["points"] = [[round(x, 5) for x in p.tolist()] for p in self.points]
        return out
