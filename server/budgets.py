"""Load-adaptive refinement budgets: `--refinement-policy fixed|adaptive`.

Under `fixed` a request gets the budget it asks for (within the server's maxima). Under
`adaptive`, when a request arrives and the engine already holds more than
`--refinement-load-target` requests (running and waiting), its refinement budgets are
scaled by target / load, rounded up, but never below the floor the client set
(`latent.min_steps`, `latent.min_samples`; default 0 steps, 1 sample) nor above what it
asked: LatentSeek's `max_steps`, the `samples` of best-of-N, self-consistency and the
hybrid, and the speculation depth (`speculative_steps`). So a loaded server answers every
request, later ones with less refinement, instead of queueing them behind full budgets or
refusing them. The budget is decided once, at admission.

`Budget.summary()` is what the response reports (`latent.budget`) and what the
`refinement_budget_cuts` counter counts. This module decides numbers only: the programs
and their limits are `server/refinement.py`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from latent_ops.choices import RefinementPolicy


@dataclass(frozen=True)
class Budget:
    policy: RefinementPolicy
    load: int  # requests in the engine when this one arrived
    scale: float  # 1.0: nothing cut

    def steps(self, asked: int, floor: int = 0) -> int:
        return self._cut(asked, floor)

    def samples(self, asked: int, floor: int = 1) -> int:
        return self._cut(asked, floor)

    def _cut(self, asked: int, floor: int) -> int:
        return max(min(floor, asked), math.ceil(asked * self.scale))

    @property
    def cut(self) -> bool:
        return self.scale < 1.0


def budget_for(policy: RefinementPolicy, load: int, target: int) -> Budget:
    """The budget scale for a request arriving when `load` requests are in the engine."""
    scale = 1.0 if policy == "fixed" or load <= target else target / load
    return Budget(policy, load, scale)


def reported(budget: Budget, asked: dict[str, int], granted: dict[str, int]) -> dict:
    """`latent.budget` in the response: what was asked, what was granted, and why."""
    return {
        "policy": budget.policy,
        "asked": asked,
        "granted": granted,
        "cut_reason": "load" if granted != asked else None,
    }
