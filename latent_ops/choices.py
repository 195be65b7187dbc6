"""Every list of choices a request, a flag or a metric label may name, in one place.

A field that takes one of these is typed with the `Literal` here (server/protocol.py,
the eval and training configs), and code that enumerates them (metrics, validation)
reads the tuple next to it, so adding a method or a reward is one edit. Nothing here
runs anything.
"""

from __future__ import annotations

from typing import Literal, get_args

# Refinement methods; "none" is plain generation. best_of_n and self_consistency are the
# token-space baselines (latent_ops/sampling.py); latentseek_best_of_n the latent/token
# hybrid (latent_ops/hybrid.py).
Method = Literal[
    "none",
    "latentseek",
    "slr",
    "contrastive",
    "best_of_n",
    "self_consistency",
    "latentseek_best_of_n",
]
SAMPLING_METHODS = ("best_of_n", "self_consistency")  # samples only
SAMPLED_METHODS = (*SAMPLING_METHODS, "latentseek_best_of_n")  # take latent.samples
REWARDED_METHODS = ("latentseek", "best_of_n", "latentseek_best_of_n")  # need a reward
METHODS: tuple[str, ...] = get_args(Method)

# Reward kinds (latent_ops/rewards.py); `RewardType` tags the request's reward object.
RewardType = Literal["reference", "regex", "self", "webhook", "arithmetic", "consistency"]
REWARD_TYPES: tuple[str, ...] = get_args(RewardType)

# Operator policy for refinement budgets under load (server/budgets.py).
RefinementPolicy = Literal["fixed", "adaptive"]

# LatentSeek: which answer a refinement returns.
Select = Literal["best", "last"]

# SLR (latent_ops/slr.py)
Layout = Literal["thoughts", "recurrent"]
Feedback = Literal["hidden", "soft", "hybrid"]
FEEDBACKS: tuple[str, ...] = get_args(Feedback)
Residual = Literal["h0", "prev", "none"]
RESIDUALS: tuple[str, ...] = get_args(Residual)
ExitCriterion = Literal["latent_diff", "kl", "entropy", "argmax"]
CRITERIA: tuple[str, ...] = get_args(ExitCriterion)
