"""Record-level DP-SGD with opacus, as a variant of the one training loop.

Each row is one record, so opacus' per-sample gradients are per-record gradients. Each is
clipped to `max_grad_norm`, Gaussian noise of std `sigma * max_grad_norm` is added to their
sum, and the step is taken by the same optimizer the plain loop uses. Batches are Poisson
sampled (opacus' sampler): an empty batch still takes a noise-only step that the accountant
counts, as opacus does. Without Poisson sampling the loop's shuffled batches are kept and the
reported epsilon is no valid guarantee.

One accountant covers a whole run for one client (or the centralized baseline): its history
is a list of (sigma, sample rate, steps) that the client keeps between rounds.

This module is what the registry reads; the opacus half (the accountant, `PrivateTraining`,
the `DPSteps` variant) is `fedmem.mitigations._dp_sgd_opacus`, imported only by a run that
trains with DP-SGD.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedmem.config import Config
from fedmem.mitigations.registry import Mitigation

if TYPE_CHECKING:
    from fedmem.mitigations._dp_sgd_opacus import GradientCanaryPlan, PrivateTraining


def sample_rate(n_rows: int, batch_size: int) -> float:
    """Poisson sampling rate, as opacus derives it from a loader of `batch_size` batches."""
    return 1 / math.ceil(n_rows / batch_size)


def private_training(
    config: Config, n_rows: int, history: Mapping[str, Any] | None = None, trainer: int = 0
) -> PrivateTraining | None:
    """DP-SGD for trainer `trainer` (the client; 0 when centralized) of `n_rows` rows per
    round and all of the run's rounds, resuming `history`; None when `dp_sgd.enabled` is
    off."""
    cfg = config.dp_sgd
    if not cfg.enabled:
        return None
    from fedmem.mitigations._dp_sgd_opacus import (
        PrivateTraining,
        accountant_from_record,
        noise_multiplier,
    )
    from fedmem.training import planned_steps

    rate = sample_rate(n_rows, config.training.batch_size)
    total = config.federation.rounds * planned_steps(config.training, n_rows)
    return PrivateTraining(
        cfg=cfg,
        noise_multiplier=noise_multiplier(cfg, rate, total),
        sample_rate=rate,
        accountant=accountant_from_record(cfg.accountant, history),
        fault=config.dp_audit.fault,
        canaries=gradient_canary_plan(config, trainer),
    )


def canary_trainers(config: Config) -> int:
    """How many trainers share the gradient canaries: canary i belongs to trainer i mod this
    (every client in a federated run; the one trainer of a centralized run)."""
    return config.federation.num_clients if config.mode == "federated" else 1


def gradient_canary_plan(config: Config, trainer: int) -> GradientCanaryPlan | None:
    """Which gradient canaries this trainer inserts (`dp_audit.gradient_canaries`); None
    when off."""
    k = config.dp_audit.gradient_canaries
    if k == 0:
        return None
    from fedmem.mitigations._dp_sgd_opacus import GradientCanaryPlan
    from fedmem.seeding import GRADIENT_CANARIES, GRADIENT_CANARY_DRAWS, derive_seed

    return GradientCanaryPlan(
        k=k,
        seed=derive_seed(config.seed, GRADIENT_CANARIES),
        draws_seed=derive_seed(config.seed, GRADIENT_CANARY_DRAWS, trainer),
        trainer=trainer,
        trainers=canary_trainers(config),
    )


def label(config: Mapping[str, Any]) -> str | None:
    d = config.get("dp_sgd", {})
    if not d.get("enabled"):
        return None
    if d["target_epsilon"] > 0:
        return f"dp-sgd(eps={d['target_epsilon']:g})"
    return f"dp-sgd(sigma={d['noise_multiplier']:g})"


MITIGATION = Mitigation(
    name="dp_sgd",
    order=30,
    label=label,
    step_variant=private_training,
)
