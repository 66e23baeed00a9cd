"""The opacus half of DP-SGD (`fedmem.mitigations.dp_sgd`): the run's accountant and the step
variant of the one training loop. Private (not scanned by the registry): it imports opacus,
which `dp_sgd` imports only when a run trains with DP-SGD.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import IAccountant, create_accountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.data_loader import DPDataLoader
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from torch.utils.data import DataLoader, TensorDataset

from attacks.dp_audit import dirac_canaries
from fedmem.config import DPSGDConfig, TrainingConfig
from fedmem.mitigations.dp_history import CANARY_SUMS_METRIC, encode_sums
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

    def owned(self) -> np.ndarray:
        """Indices of this trainer's canaries, ascending (the order of its iterate sums)."""
        return np.flatnonzero(np.arange(self.k) % self.trainers == self.trainer)

    def inserted(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(coordinates, signs) of this trainer's included canaries among `dim` parameters."""
        canaries = dirac_canaries(dim, self.k, self.seed)
        mine = (np.arange(self.k) % self.trainers == self.trainer) & canaries.included
        return canaries.coordinates[mine], canaries.signs[mine]


class GradientCanaries:
    """Adds the included canaries into DP-SGD's clipped per-record gradient sum, before the
    noise: in each step each is Poisson sampled at the run's rate and, when sampled, adds
    sign x clip norm on its coordinate, exactly what a record whose clipped gradient is that
    Dirac vector adds. The accountant's per-record epsilon is then the canaries' epsilon.

    It also watches every canary of this trainer, included or not, alike: after opacus has
    added the noise and divided by the expected batch size, each canary coordinate of the
    privatized gradient (what the optimizer consumes, before AdamW's scaling) is added to
    that canary's running sum over this fit's steps (`sums`, the all-iterates statistic of
    `fedmem.audits.dp.run_audit.GradientCanaryAudit`)."""

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
        # Per parameter: (its flat positions, their places in `sums`) of every canary of this
        # trainer on it, included or not.
        owned = plan.owned()
        watched = dirac_canaries(sum(sizes), plan.k, plan.seed).coordinates[owned]
        holder = np.searchsorted(starts, watched, side="right") - 1
        self.watched = [
            (
                i,
                torch.as_tensor(watched[holder == i] - starts[i], device=p.device),
                torch.as_tensor(np.flatnonzero(holder == i), device=p.device),
            )
            for i, p in enumerate(params)
            if (holder == i).any()
        ]
        device = params[0].device if params else torch.device("cpu")
        # [this trainer's canaries]: the sum over this fit's steps of the privatized gradient
        # at each one's coordinate, in the order of `plan.owned()`
        self.sums = torch.zeros(len(owned), dtype=torch.float64, device=device)
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

    @torch.no_grad()
    def record(self) -> None:
        """After opacus' noise and scaling: each canary's coordinate of the privatized
        gradient (`.grad`) into its running sum; the same for included and excluded ones."""
        for i, positions, places in self.watched:
            grad = self.params[i].grad.view(-1)
            self.sums.index_add_(0, places, grad[positions].to(torch.float64))


@dataclass
class PrivateTraining:
    """DP-SGD for one client (or the centralized baseline) over a whole run."""

    cfg: DPSGDConfig
    noise_multiplier: float
    sample_rate: float
    accountant: IAccountant
    fault: str = "none"  # dp_audit.fault: a deliberately broken mechanism (auditing the auditor)
    canaries: GradientCanaryPlan | None = None  # dp_audit.gradient_canaries of this trainer
    inserted: GradientCanaries | None = None  # this fit's, once its step variant is built

    def variant(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        n_rows: int,
        cfg: TrainingConfig,
    ) -> StepVariant:
        steps = STEPS[self.cfg.grad_sample_mode]
        return steps(model, optimizer, n_rows, cfg, self)

    def epsilon(self) -> float:
        if not self.accountant.history:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        return float(self.accountant.get_epsilon(delta=self.cfg.delta))

    def history(self) -> dict[str, list]:
        """The accountant's history, from which the next local fit resumes."""
        return history_to_record(self.accountant)

    def metrics(self) -> dict[str, bool | bytes | float | int]:
        """Fit metrics; `dp_poisson = False` marks an epsilon that is no valid guarantee.
        With gradient canaries, their sums over this fit's steps travel as bytes
        (`fedmem.mitigations.dp_history.CANARY_SUMS_METRIC`)."""
        return {
            "dp_epsilon": self.epsilon(),
            "dp_delta": self.cfg.delta,
            "dp_noise_multiplier": self.noise_multiplier,
            "dp_sample_rate": self.sample_rate,
            "dp_steps": sum(n for _, _, n in self.accountant.history),
            "dp_poisson": self.cfg.poisson,
            **({} if self.inserted is None else {CANARY_SUMS_METRIC: self.canary_sums_bytes()}),
        }

    def canary_sums(self) -> np.ndarray | None:
        """This fit's all-iterates sums of this trainer's gradient canaries (float64, in the
        order of `GradientCanaryPlan.owned`); None without canaries."""
        if self.inserted is None:
            return None
        return self.inserted.sums.cpu().numpy()

    def canary_sums_bytes(self) -> bytes:
        return encode_sums(self.canary_sums())


def break_mechanism(
    module: torch.nn.Module, optimizer: DPOptimizer, private: PrivateTraining
) -> None:
    """For auditing the auditor only (`dp_audit.fault`): break DP-SGD while the accountant
    keeps accounting the configured sigma, as a buggy implementation would.
    "no-clipping": per-record gradients are not clipped, the noise std stays sigma * C;
    "noise-tenth": the noise is a tenth of the accounted one."""
    sigma, clip = private.noise_multiplier, private.cfg.max_grad_norm
    if private.fault == "no-clipping":
        optimizer.max_grad_norm = UNCLIPPED
        optimizer.noise_multiplier = sigma * clip / UNCLIPPED  # opacus' std: multiplier x norm
        if isinstance(module, GradSampleModuleFastGradientClipping):
            module.max_grad_norm = UNCLIPPED  # ghost clipping clips in the module
    elif private.fault == "noise-tenth":
        optimizer.noise_multiplier = sigma / 10
    else:
        raise ValueError(f"unknown DP fault {private.fault!r}")
    accountant, rate = private.accountant, private.sample_rate
    optimizer.attach_step_hook(
        lambda _optimizer: accountant.step(noise_multiplier=sigma, sample_rate=rate)
    )


def make_private(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    private: PrivateTraining,
) -> tuple[torch.nn.Module, DPOptimizer, DataLoader]:
    """opacus' PrivacyEngine for hooks and ghost modes: the wrapped module, the DP optimizer
    (its step hook extends the run's accountant) and the Poisson loader."""
    engine = PrivacyEngine(accountant=private.cfg.accountant)
    engine.accountant = private.accountant  # its step hook then extends the run's history
    made = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=private.noise_multiplier,
        max_grad_norm=private.cfg.max_grad_norm,
        poisson_sampling=private.cfg.poisson,
        loss_reduction="mean",
        grad_sample_mode=private.cfg.grad_sample_mode,
    )
    # Ghost mode also returns a loss wrapper; `GhostDPSteps.backward` does its two passes
    # itself, so that a batch's length groups add up (the wrapper zeroes gradients).
    module, dp_optimizer, dp_loader = made[0], made[1], made[-1]
    # A batch is computed in length groups, one backward pass each; opacus stacks their
    # per-sample gradients into the batch's one step. (It forbids this under Poisson
    # sampling only to catch accumulation *across* steps, which this loop never does.)
    module.allow_grad_accumulation()
    return module, dp_optimizer, dp_loader


def make_private_bookkeeping(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    private: PrivateTraining,
) -> tuple[torch.nn.Module, DPOptimizer, DataLoader]:
    """What `PrivacyEngine.make_private` builds, less the module wrapper: opacus' optimizer
    for gradients that arrive already clipped and summed (the one its ghost mode uses: it adds
    the same noise and divides by the same expected batch size), its Poisson loader and the
    accountant's step hook. The model stays as it is; `BookkeepingDPSteps` clips."""
    dp_loader = DPDataLoader.from_data_loader(loader) if private.cfg.poisson else loader
    rate = 1 / len(dp_loader)
    dp_optimizer = DPOptimizerFastGradientClipping(
        optimizer,
        noise_multiplier=private.noise_multiplier,
        max_grad_norm=private.cfg.max_grad_norm,
        expected_batch_size=int(len(loader.dataset) * rate),
        loss_reduction="mean",
    )
    dp_optimizer.attach_step_hook(private.accountant.get_optimizer_hook_fn(sample_rate=rate))
    return model, dp_optimizer, dp_loader


def insert_canaries(
    optimizer: DPOptimizer, private: PrivateTraining, model: torch.nn.Module
) -> GradientCanaries:
    """The optimizer's clipping step then also adds this trainer's gradient canaries to the
    clipped sum, before the noise, and its scaling step then adds the privatized gradient
    at every canary coordinate to the canaries' sums (opacus' `pre_step`:
    clip_and_accumulate, add_noise, scale_grad)."""
    params = [p for p in model.parameters() if p.requires_grad]  # the flat trainable order
    steps_so_far = sum(n for _, _, n in private.accountant.history)
    canaries = GradientCanaries(
        private.canaries, params, private.sample_rate, private.cfg.max_grad_norm, steps_so_far
    )
    # opacus' hook-mode optimizer clips and sums in `clip_and_accumulate`; the one for
    # gradients that arrive clipped and summed (ghost, book-keeping) in `accumulate`.
    name = ("accumulate" if isinstance(optimizer, DPOptimizerFastGradientClipping)
            else "clip_and_accumulate")
    accumulate = getattr(optimizer, name)

    def with_canaries() -> None:
        accumulate()
        canaries.add()

    scale = optimizer.scale_grad

    def recording_canaries() -> None:
        scale()
        canaries.record()

    setattr(optimizer, name, with_canaries)
    optimizer.scale_grad = recording_canaries
    return canaries


class DPSteps(StepVariant):
    """Poisson batches, per-record losses, per-record clipping and noise in the optimizer."""

    make_private = staticmethod(make_private)

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        n_rows: int,
        cfg: TrainingConfig,
        private: PrivateTraining,
    ) -> None:
        # The loader only tells opacus the row count and batch size (and gives its sampler).
        loader = DataLoader(TensorDataset(torch.arange(n_rows)), batch_size=cfg.batch_size)
        module, dp_optimizer, dp_loader = self.make_private(model, optimizer, loader, private)
        if not math.isclose(1 / len(dp_loader), private.sample_rate):
            raise RuntimeError("opacus' sample rate differs from the one sigma was derived for")
        if private.fault != "none":
            break_mechanism(module, dp_optimizer, private)
        if private.canaries is not None:
            private.inserted = insert_canaries(dp_optimizer, private, model)
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


class GhostDPSteps(DPSteps):
    """DP-SGD with opacus' ghost clipping: per part of a batch, a first backward pass whose
    hooks compute each record's gradient norm (never the gradient), then a second one of the
    records' losses weighted by their clip factors, which adds the clipped gradients' sum to
    `.grad`. The optimizer then adds the same noise and divides by the same expected batch
    size as in hooks mode."""

    def backward(self, parts: Sequence[Batch]) -> float:
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        total, rows = 0.0, 0
        for part in parts:
            before = [p.grad for p in params]  # the clipped sums of the earlier parts
            for p in params:
                p.grad = None  # else the first pass would add into them in place
            self.module.enable_hooks()  # the forward records activations for the norms
            losses = record_losses(
                self.module(input_ids=part.input_ids, attention_mask=part.attention_mask).logits,
                part.labels,
            )
            losses.mean().backward(retain_graph=True)  # fills each parameter's _norm_sample
            factors = self.module.get_clipping_coef()  # [records], min(1, C / norm)
            for p, grad in zip(params, before, strict=True):
                p.grad = grad
            self.module.disable_hooks()
            (factors.to(losses.device) * losses).sum().backward()
            total += float(losses.detach().sum())
            rows += len(part.input_ids)
        self.module.enable_hooks()
        return total / rows

    def empty_batch(self) -> None:
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)


class BookkeepingDPSteps(DPSteps):
    """DP-SGD by book-keeping (Bu et al., 2023), for models whose trainable parameters all
    sit in `nn.Linear` layers (LoRA's A and B matrices): one forward and one backward per
    part of a batch, no opacus module hooks. A forward hook keeps each trainable layer's
    input and output; the backward pass computes only the outputs' gradients (never the
    weights' own, unclipped ones). From a layer's input and output gradient come each
    record's gradient of that layer (small for LoRA: rank x width), hence each record's
    norm, its clip factor and the clipped sum. The sum becomes `.grad`; opacus' optimizer
    adds the noise, divides by the expected batch size and steps the accountant as in
    hooks mode."""

    make_private = staticmethod(make_private_bookkeeping)

    def __init__(self, model, optimizer, n_rows, cfg, private) -> None:
        super().__init__(model, optimizer, n_rows, cfg, private)
        layers = trainable_linears(model)
        # Layers of one weight shape are computed together (one batched matmul per shape,
        # not one small one per layer: 56 LoRA matrices in the quickstart, 4 shapes).
        self.by_shape: dict[tuple[int, ...], list[torch.nn.Linear]] = defaultdict(list)
        for layer in layers:
            self.by_shape[tuple(layer.weight.shape)].append(layer)
        self.biased = [layer for layer in layers if has_trainable_bias(layer)]
        # layer -> [its input, its output] of the last forward; after the backward pass
        # [its input, the gradient of its output]
        self.seen: dict[torch.nn.Module, list[torch.Tensor | None]] = {}
        self.handles = [layer.register_forward_hook(self._keep) for layer in layers]

    def _keep(self, layer: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if not torch.is_grad_enabled():
            return
        if layer in self.seen:
            raise RuntimeError(f"{layer} ran twice before a backward pass (tied weights?)")
        self.seen[layer] = [inputs[0].detach(), output]

    def backward(self, parts: Sequence[Batch]) -> float:
        # weight shape -> [layers, out, in], the clipped sums of that shape's layers
        clipped = {
            shape: torch.zeros((len(layers), *shape), dtype=layers[0].weight.dtype)
            for shape, layers in self.by_shape.items()
        }
        biases = {layer: torch.zeros_like(layer.bias) for layer in self.biased}
        total, rows = 0.0, 0
        for part in parts:
            logits = self.module(input_ids=part.input_ids, attention_mask=part.attention_mask)
            losses = record_losses(logits.logits, part.labels)  # [records]
            # Each layer's output gradient, each record's its own loss's. Only these: the
            # weights' own gradients (the unclipped sum) are never computed.
            outputs = [slot[1] for slot in self.seen.values()]
            grads = torch.autograd.grad(losses.sum(), outputs, allow_unused=True)
            for slot, grad in zip(self.seen.values(), grads, strict=True):
                slot[1] = grad
            total += float(losses.detach().sum())
            rows += len(losses)
            self._add_clipped(clipped, biases, len(losses))
        for shape, layers in self.by_shape.items():
            for layer, grad in zip(layers, clipped[shape], strict=True):
                layer.weight.grad = grad
        for layer, grad in biases.items():
            layer.bias.grad = grad
        return total / rows

    @torch.no_grad()
    def _add_clipped(
        self,
        clipped: dict[tuple[int, ...], torch.Tensor],
        biases: dict[torch.nn.Module, torch.Tensor],
        n: int,
    ) -> None:
        """Adds this part's per-record clipped gradient sums into `clipped` and `biases`."""
        seen, self.seen = self.seen, {}
        if any(grad is None for _, grad in seen.values()):
            raise RuntimeError("a trainable layer got no gradient in the backward pass")
        per_record: dict[tuple[int, ...], torch.Tensor] = {}
        squares = torch.zeros(n)  # each record's squared gradient norm over all parameters
        for shape, layers in self.by_shape.items():
            # [layers * records, positions, in] and [..., out] -> [layers, records, out, in]
            inputs = torch.stack([seen[layer][0].reshape(n, -1, shape[1]) for layer in layers])
            grads = torch.stack([seen[layer][1].reshape(n, -1, shape[0]) for layer in layers])
            inputs = inputs.flatten(0, 1).to(grads.dtype)
            g = torch.bmm(grads.flatten(0, 1).transpose(1, 2), inputs).view(len(layers), n, *shape)
            per_record[shape] = g
            squares += g.pow(2).sum((2, 3)).sum(0)
        bias_grads = {}
        for layer in self.biased:
            bias_grads[layer] = seen[layer][1].reshape(n, -1, layer.bias.shape[0]).sum(1)
            squares += bias_grads[layer].pow(2).sum(1)
        clip = self.optimizer.max_grad_norm  # read here: `dp_audit.fault` may change it
        factors = (clip / (squares.sqrt() + 1e-6)).clamp(max=1.0)  # opacus' clip factor
        for shape, g in per_record.items():
            clipped[shape] += torch.einsum("n,lnij->lij", factors, g)
        for layer, g in bias_grads.items():
            biases[layer] += factors @ g

    def empty_batch(self) -> None:
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def has_trainable_bias(layer: torch.nn.Linear) -> bool:
    return layer.bias is not None and layer.bias.requires_grad


def trainable_linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The layers holding the model's trainable parameters; each must be an `nn.Linear`."""
    layers = []
    for name, module in model.named_modules():
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        if not isinstance(module, torch.nn.Linear):
            raise ValueError(
                f"dp_sgd.grad_sample_mode = 'bookkeeping' clips nn.Linear layers only; "
                f"{name} is a {type(module).__name__} (use model.finetuning = 'lora')"
            )
        layers.append(module)
    return layers


# dp_sgd.grad_sample_mode -> the step variant that clips that way
STEPS: dict[str, type[DPSteps]] = {
    "hooks": DPSteps,
    "ghost": GhostDPSteps,
    "bookkeeping": BookkeepingDPSteps,
}
