"""One DP-SGD step through the run's own step variant, read back as the gradient applied."""

from __future__ import annotations

import torch

from fedmem.mitigations.dp_sgd import private_training
from fedmem.models.loading import build_model, load_tokenizer
from fedmem.training import collate


def one_dp_step(config, rows, empty: bool = False):
    """The flat gradient the wrapped optimizer applies in one DP step on `rows` (or on an
    empty Poisson batch), and the private training that took it."""
    model = build_model(config).train()
    private = private_training(config, len(rows))
    params = [p for p in model.parameters() if p.requires_grad]
    seen: list[torch.Tensor] = []
    inner = torch.optim.SGD(params, lr=0.0)
    inner.register_step_pre_hook(lambda *_: seen.extend(p.grad.clone() for p in params))
    steps = private.variant(model, inner, len(rows), config.training)
    if empty:
        steps.empty_batch()
    else:
        steps.backward([collate(rows, load_tokenizer(config).pad_token_id)])
    steps.step()
    steps.close()
    return torch.cat([g.flatten() for g in seen]), private
