"""Weight-noise injection: the post-hoc baseline of the reference study.

Gaussian noise N(0, sigma^2) is added to the trainable weights (the LoRA adapter under LoRA,
every weight under full fine-tuning) of the model that is audited, never to the training
state: `noised_weights` adds it in place for the duration of the audit and restores the
exact weights afterwards, copying only the trainable tensors.

Every audited fine-tuned model is noised (each round's global model is the final model had
training stopped there); the round-0 base model is not, so a noised run and an un-noised run
share the same "before fine-tuning" baseline and the noise is measured on what fine-tuning
produced.

The recorder applies it through the registry's audited-model transform (`audited_model`);
torch is imported inside the functions, since the registry imports this module for its label.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from fedmem.config import Config, WeightNoiseConfig
from fedmem.mitigations.registry import Mitigation
from fedmem.seeding import WEIGHT_NOISE, derive_seed

if TYPE_CHECKING:
    import torch


def add_weight_noise(model: torch.nn.Module, sigma: float, seed: int) -> None:
    """Add N(0, sigma^2) to every trainable parameter in place, drawn in parameter order
    from a generator seeded with `seed` (frozen parameters are left alone)."""
    if sigma < 0:
        raise ValueError(f"add_weight_noise: sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
                p.add_(noise.mul_(sigma).to(dtype=p.dtype, device=p.device))


def audit_sigma(cfg: WeightNoiseConfig, server_round: int) -> float:
    """Noise std for the audit of `server_round`'s model: none for the round-0 base model."""
    return 0.0 if server_round == 0 else cfg.sigma


def noise_seed(seed: int, server_round: int) -> int:
    """A fresh, reproducible noise draw per round, derived from the run seed."""
    return derive_seed(seed, WEIGHT_NOISE, server_round)


@contextmanager
def noised_weights(model: torch.nn.Module, sigma: float, seed: int) -> Iterator[None]:
    """Within the block the model's trainable weights carry noise; afterwards they are
    restored bit for bit."""
    if sigma == 0:
        yield
        return
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    add_weight_noise(model, sigma, seed)
    try:
        yield
    finally:
        import torch

        with torch.no_grad():
            for p, original in zip(params, saved, strict=True):
                p.copy_(original)


@contextmanager
def audited_model(
    config: Config, model: torch.nn.Module, server_round: int
) -> Iterator[dict[str, Any]]:
    """The audit of `server_round` sees the model noised; the metrics row gets the noise std
    (0 when off, and for the round-0 base model)."""
    sigma = audit_sigma(config.weight_noise, server_round)
    with noised_weights(model, sigma, noise_seed(config.seed, server_round)):
        yield {"weight_noise_sigma": sigma}


def label(config: Mapping[str, Any]) -> str | None:
    sigma = config.get("weight_noise", {}).get("sigma", 0)
    return f"weight-noise(sigma={sigma:g})" if sigma > 0 else None


MITIGATION = Mitigation(
    name="weight_noise",
    order=20,
    label=label,
    audited_model=audited_model,
)
