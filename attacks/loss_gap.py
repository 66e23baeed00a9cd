"""Canary loss gap: how much likelier a model finds the secrets of canaries it was trained on
than those of never-injected twins from the same generator.

For each canary, the secret's loss is the mean per-token negative log-probability (nats) of
its secret tokens, each given every token before it in the record (teacher forcing: one
forward pass per batch, no generation). The gap of a group is

    gap = mean twin secret loss - mean injected secret loss

so it is 0 for a model that learned only the format, and positive by as many nats per token
as training on the canaries made their secrets likelier than unseen secrets. Unlike exact
extraction it moves before any secret is reproduced verbatim, and unlike a membership AUC it
keeps its size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attacks.likelihood import token_logprobs


def secret_losses(
    model: torch.nn.Module,
    rows: Sequence[Sequence[int]],
    secret_starts: Sequence[int],
    pad_id: int,
    batch_size: int = 64,
) -> list[float]:
    """Mean loss (nats per token) of the tokens `rows[i][secret_starts[i]:]`, each scored
    given all the tokens before it in its row."""
    if len(rows) != len(secret_starts):
        raise ValueError(f"{len(rows)} rows but {len(secret_starts)} secret starts")
    for row, start in zip(rows, secret_starts, strict=True):
        if not 1 <= start < len(row):
            raise ValueError(f"secret start {start} outside 1..{len(row) - 1}: "
                             "a secret needs a token before it and at least one token")
    scores = token_logprobs(model, rows, pad_id, batch_size)
    # Without a context, logprob[t] scores token t + 1 of the row.
    return [float(-s.logprob[start - 1 :].mean())
            for s, start in zip(scores, secret_starts, strict=True)]


def loss_gap(injected: Sequence[float], twins: Sequence[float]) -> float | None:
    """Mean twin secret loss minus mean injected secret loss; None when a side is empty."""
    if not injected or not twins:
        return None
    return sum(twins) / len(twins) - sum(injected) / len(injected)
