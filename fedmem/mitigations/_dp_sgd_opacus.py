"""The opacus half of DP-SGD (`fedmem.mitigations.dp_sgd`): the run's accountant and the step
variant of the one training loop. Private (not scanned by the registry): it imports opacus,
which `dp_sgd` imports only when a run trains with DP-SGD.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import IAccountant, create_accountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.optimizers import DPOptimizer
from torch.utils.data import DataLoader, TensorDataset

from attacks.dp_audit import dirac_canaries
from fedmem.config import DPSGDConfig, TrainingConfig
from fedmem.training import Batch, StepVariant, record_losses

HISTORY_FIELDS = ("noise_multiplier", "sample_rate", "steps")
UNCLIPPED = 1e12  # a clip norm no per-record gradient reaches


@lru_cache(maxsize=64)
def noise_multiplier(cfg: DPSGDConfig, rate: float, total_steps: int) -> float:
    """sigma: the configured one, or the smallest that keeps `total_steps` steps at `rate`
    within (target_epsilon, delta)."""
    if cfg.target_epsilon == 0:
        return cfg.noise_multiplier
    return get_noise_multiplier(
        target_epsilon=cfg.target_epsilon,
        target_delta=cfg.delta,
        sample_rate=rate,
        steps=total_steps,
        accountant=cfg.accountant,
    )


def history_to_record(accountant: IAccountant) -> dict[str, list]:
    """The accountant's history as flat lists (a Flower `ConfigRecord` holds these)."""
    columns = list(zip(*accountant.history, strict=True)) or [(), (), ()]
    sigmas, rates, steps = columns
    return {
        "noise_multiplier": [float(s) for s in sigmas],
        "sample_rate": [float(q) for q in rates],
        "steps": [int(n) for n in steps],
    }


def accountant_from_record(kind: str, record: Mapping[str, Any] | None) -> IAccountant:
    accountant = create_accountant(mechanism=kind)
    if record:
        columns = [record[f] for f in HISTORY_FIELDS]
        accountant.history = [
            (float(s), float(q), int(n)) for s, q, n in zip(*columns, strict=True)
        ]
    return accountant


@dataclass(frozen=True)
class GradientCanaryPlan:
    """The Dirac gradient canaries one trainer inserts (`attacks.dp_audit.dirac_canaries`;
    the audit regenerates the same ones from `seed`): canary i belongs to trainer i mod
    `trainers`, and an included one of this trainer's enters each step's clipped sum with
    the run's Poisson sample rate, as one more record would."""

    k: int
    seed: int  # of the canaries' coordinates, signs and inclusion bits (the whole run's)
    draws_seed: int  # of this trainer's per-step Poisson draws
    trainer: int
    trainers: int

    def inserted(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(coordinates, signs) of this trainer's included canaries among `dim` parameters."""
        canaries = dirac_canaries(dim, self.k, self.seed)
        mine = (np.arange(self.k) % self.trainers == self.trainer) & canaries.included
        return canaries.coordinates[mine], canaries.signs[mine]


class GradientCanaries:
    """Adds the included canaries into DP-SGD's clipped per-record gradient sum, before the
    noise: in each step each is Poisson sampled at the run's rate and, when sampled, adds
    sign x clip norm on its coordinate, exactly what a record whose clipped gradient is that
    Dirac vector adds. The accountant's per-record epsilon is then the canaries' epsilon."""

    def __init__(
        self, plan: GradientCanaryPlan, params: Sequence[torch.Tensor], rate: float,
        clip: float, steps_so_far: int,
    ) -> None:
        sizes = [p.numel() for p in params]
        coordinates, signs = plan.inserted(sum(sizes))
        starts = np.cumsum([0, *sizes])
        owner = np.searchsorted(starts, coordinates, side="right") - 1  # param of each canary
        # Per parameter: (its flat positions, sign x clip) of the canaries on it.
        self.slots = [
            (
                i,
                torch.as_tensor(coordinates[owner == i] - starts[i], device=p.device),
                torch.as_tensor(signs[owner == i] * clip, dtype=p.dtype, device=p.device),
            )
            for i, p in enumerate(params)
            if (owner == i).any()
        ]
        self.params = params
        self.rate = rate
        # A fresh stream per local fit: the steps taken so far tell the fits apart.
        self.rng = np.random.default_rng([plan.draws_seed, steps_so_far])

    def add(self) -> None:
        """Into each parameter's `summed_grad` (opacus' clipped sum of this step)."""
        for i, positions, values in self.slots:
            sampled = torch.as_tensor(self.rng.random(len(positions)) < self.rate)
            if sampled.any():
                summed = self.params[i].summed_grad.view(-1)
                summed.index_add_(0, positions[sampled.to(positions.device)],
                                  values[sampled.to(values.device)])


@dataclass
class PrivateTraining:
    """DP-SGD for one client (or the centralized baseline) over a whole run."""

    cfg: DPSGDConfig
    noise_multiplier: float
    sample_rate: float
    accountant: IAccountant
    fault: str = "none"  # dp_audit.fault: a deliberately broken mechanism (auditing the auditor)
    canaries: GradientCanaryPlan | None = None  # dp_audit.gradient_canaries of this trainer

    def variant(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        n_rows: int,
        cfg: TrainingConfig,
    ) -> StepVariant:
        return DPSteps(model, optimizer, n_rows, cfg, self)

    def epsilon(self) -> float:
        if not self.accountant.history:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        return float(self.accountant.get_epsilon(delta=self.cfg.delta))

    def history(self) -> dict[str, list]:
        """The accountant's history, from which the next local fit resumes."""
        return history_to_record(self.accountant)

    def metrics(self) -> dict[str, bool | float | int]:
        """Fit metrics; `dp_poisson = False` marks an epsilon that is no valid guarantee."""
        return {
            "dp_epsilon": self.epsilon(),
            "dp_delta": self.cfg.delta,
            "dp_noise_multiplier": self.noise_multiplier,
            "dp_sample_rate": self.sample_rate,
            "dp_steps": sum(n for _, _, n in self.accountant.history),
            "dp_poisson": self.cfg.poisson,
        }


def break_mechanism(optimizer: DPOptimizer, private: PrivateTraining) -> None:
    """For auditing the auditor only (`dp_audit.fault`): break DP-SGD while the accountant
    keeps accounting the configured sigma, as a buggy implementation would.
    "no-clipping": per-record gradients are not clipped, the noise std stays sigma * C;
    "noise-tenth": the noise is a tenth of the accounted one."""
    sigma, clip = private.noise_multiplier, private.cfg.max_grad_norm
    if private.fault == "no-clipping":
        optimizer.max_grad_norm = UNCLIPPED
        optimizer.noise_multiplier = sigma * clip / UNCLIPPED  # opacus' std: multiplier x norm
    elif private.fault == "noise-tenth":
        optimizer.noise_multiplier = sigma / 10
    else:
        raise ValueError(f"unknown DP fault {private.fault!r}")
    accountant, rate = private.accountant, private.sample_rate
    optimizer.attach_step_hook(
        lambda _optimizer: accountant.step(noise_multiplier=sigma, sample_rate=rate)
    )


def insert_canaries(
    optimizer: DPOptimizer, private: PrivateTraining, model: torch.nn.Module
) -> None:
    """The optimizer's clipping step then also adds this trainer's gradient canaries to the
    clipped sum, before the noise (opacus' `pre_step`: clip_and_accumulate, add_noise)."""
    params = [p for p in model.parameters() if p.requires_grad]  # the flat trainable order
    steps_so_far = sum(n for _, _, n in private.accountant.history)
    canaries = GradientCanaries(
        private.canaries, params, private.sample_rate, private.cfg.max_grad_norm, steps_so_far
    )
    clip_and_accumulate = optimizer.clip_and_accumulate

    def with_canaries() -> None:
        clip_and_accumulate()
        canaries.add()

    optimizer.clip_and_accumulate = with_canaries


class DPSteps(StepVariant):
    """Poisson batches, per-record losses, per-record clipping and noise in the optimizer."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        n_rows: int,
        cfg: TrainingConfig,
        private: PrivateTraining,
    ) -> None:
        engine = PrivacyEngine(accountant=private.cfg.accountant)
        engine.accountant = private.accountant  # its step hook then extends the run's history
        # The loader only tells opacus the row count and batch size (and gives its sampler).
        loader = DataLoader(TensorDataset(torch.arange(n_rows)), batch_size=cfg.batch_size)
        module, dp_optimizer, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=private.noise_multiplier,
            max_grad_norm=private.cfg.max_grad_norm,
            poisson_sampling=private.cfg.poisson,
            loss_reduction="mean",
            grad_sample_mode="hooks",
        )
        if not math.isclose(1 / len(dp_loader), private.sample_rate):
            raise RuntimeError("opacus' sample rate differs from the one sigma was derived for")
        if private.fault != "none":
            break_mechanism(dp_optimizer, private)
        if private.canaries is not None:
            insert_canaries(dp_optimizer, private, model)
        # A batch is computed in length groups, one backward pass each; opacus stacks their
        # per-sample gradients into the batch's one step. (It forbids this under Poisson
        # sampling only to catch accumulation *across* steps, which this loop never does.)
        module.allow_grad_accumulation()
        # Clipping happens per record inside the DP optimizer, never on the noisy sum.
        super().__init__(module, dp_optimizer, n_rows, cfg)
        self.grad_clip = 0.0
        self.sampler = dp_loader.batch_sampler if private.cfg.poisson else None

    def epoch(self, rng: random.Random) -> Iterable[list[int]]:
        if self.sampler is None:
            return super().epoch(rng)
        return self.sampler

    def loss(self, batch: Batch) -> torch.Tensor:
        logits = self.module(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return record_losses(logits, batch.labels).mean()

    def backward(self, parts: Sequence[Batch]) -> float:
        """Each part's mean per-record loss, backward on its own: opacus scales a part's
        per-sample gradients by its row count, so each row gets its own loss's gradient
        whatever part it is in. Returns the mean per-record loss over the batch."""
        total, rows = 0.0, 0
        for part in parts:
            loss = self.loss(part)
            loss.backward()
            total += float(loss.detach()) * len(part.input_ids)
            rows += len(part.input_ids)
        # One batch's parts, not accumulated batches: the optimizer divides the noisy sum by
        # the expected batch size times the number of stacked passes, so stack them here.
        for param in self.module.parameters():
            if isinstance(getattr(param, "grad_sample", None), list):
                param.grad_sample = torch.cat(param.grad_sample, dim=0)
        return total / rows

    def empty_batch(self) -> None:
        # opacus' shape for "no record sampled": the step adds noise only, and is counted.
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                p.grad_sample = p.new_zeros((0, *p.shape))

    def close(self) -> None:
        self.module.to_standard_module()
