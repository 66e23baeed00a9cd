"""DP-SGD steps through the run's own step variant, read back as the gradients applied."""

from __future__ import annotations

import torch

from fedmem.mitigations.dp_sgd import private_training
from fedmem.models.loading import build_model, load_tokenizer
from fedmem.training import collate


def dp_steps(config, rows, steps: int, empty: bool = False):
    """The flat gradients ([steps, trainable parameters]) the wrapped optimizer applies in
    `steps` DP steps, each on all of `rows` (or on an empty Poisson batch), and the private
    training that took them."""
    model = build_model(config).train()
    private = private_training(config, len(rows))
    params = [p for p in model.parameters() if p.requires_grad]
    seen: list[torch.Tensor] = []
    inner = torch.optim.SGD(params, lr=0.0)
    inner.register_step_pre_hook(
        lambda *_: seen.append(torch.cat([p.grad.flatten() for p in params]))
    )
    variant = private.variant(model, inner, len(rows), config.training)
    for _ in range(steps):
        if empty:
            variant.empty_batch()
        else:
            variant.backward([collate(rows, load_tokenizer(config).pad_token_id)])
        variant.step()
    variant.close()
    return torch.stack(seen), private


def one_dp_step(config, rows, empty: bool = False):
    """The flat gradient the wrapped optimizer applies in one DP step on `rows` (or on an
    empty Poisson batch), and the private training that took it."""
    applied, private = dp_steps(config, rows, 1, empty)
    return applied[0], private
