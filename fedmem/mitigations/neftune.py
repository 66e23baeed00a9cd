"""NEFTune (Jain et al. 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning").

During local training only, every forward pass adds uniform noise to the input embeddings:

    embeddings + U(-1, 1) * alpha / sqrt(L * d)

with L the sequence length of the forward pass's batch (padded; in fedmem's loop, of the
length group) and d the hidden size, as the paper's reference implementation computes it.
The noise is drawn afresh for every forward pass.

It is a forward hook on the model's input-embedding module (`get_input_embeddings()`, the
underlying model's `embed_tokens`), put on by `local_fit` around the training loop and taken
off after it, and it adds noise only while that module is in training mode: audits,
generation and held-out loss (eval mode, after local training) never see it. Because the hook
sits on the module itself it applies unchanged under LoRA (peft wraps the model) and under
DP-SGD (opacus wraps the model in a GradSampleModule and hooks the trainable modules: adding
a constant to the embedding output leaves the gradient with respect to it, and so opacus'
per-sample gradients of a trainable embedding, exact).

The noise comes from a torch Generator seeded from the local training seed, never from the
global RNG: a run is deterministic for its seed, and NEFTune shifts no other random draw
(batches, dropout, DP noise are those of the same run without it).

torch is imported inside the functions: the registry imports this module for its label.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from fedmem.config import Config
from fedmem.mitigations.registry import Mitigation

if TYPE_CHECKING:
    import torch

NOISE_STREAM = "neftune"  # fedmem.seeding stream of the noise generator


def noise_bound(alpha: float, seq_len: int, hidden: int) -> float:
    """The largest noise value: alpha / sqrt(L * d)."""
    return alpha / math.sqrt(seq_len * hidden)


def embedding_noise(
    embeddings: torch.Tensor, alpha: float, generator: torch.Generator
) -> torch.Tensor:
    """Noise for a [batch, L, d] embedding output: U(-1, 1) * alpha / sqrt(L * d), drawn in
    fp32 from `generator` (on the embeddings' device), returned in their dtype."""
    import torch

    seq_len, hidden = embeddings.shape[-2], embeddings.shape[-1]
    draw = torch.rand(
        embeddings.shape, generator=generator, dtype=torch.float32, device=embeddings.device
    )
    noise = (draw * 2 - 1) * noise_bound(alpha, seq_len, hidden)
    return noise.to(embeddings.dtype)


@contextmanager
def noisy_embeddings(model: torch.nn.Module, alpha: float, seed: int) -> Iterator[None]:
    """Within the block, each forward pass of `model` in training mode adds NEFTune noise to
    its input embeddings, drawn from generators seeded with `seed` (one per device)."""
    import torch

    module = model.get_input_embeddings()
    generators: dict[torch.device, torch.Generator] = {}

    def hook(module: torch.nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training:
            return None
        generator = generators.get(output.device)
        if generator is None:
            generator = torch.Generator(device=output.device).manual_seed(seed)
            generators[output.device] = generator
        return output + embedding_noise(output, alpha, generator)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def training_hook(config: Config, model: torch.nn.Module, seed: int):
    """NEFTune for one local fit with training seed `seed`; None when off."""
    if not config.neftune.enabled:
        return None
    from fedmem.seeding import derive_seed

    return noisy_embeddings(model, config.neftune.alpha, derive_seed(seed, NOISE_STREAM))


def label(config: Mapping[str, Any]) -> str | None:
    n = config.get("neftune", {})
    return f"neftune(alpha={n['alpha']:g})" if n.get("enabled") else None


MITIGATION = Mitigation(
    name="neftune",
    order=60,
    label=label,
    training_hook=training_hook,
)
