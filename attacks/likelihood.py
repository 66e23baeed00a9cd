"""Teacher-forced token log-probabilities: the one likelihood computation behind exposure,
membership inference and multiple-choice utility.

`token_logprobs` scores every token of each row given the tokens before it (and an optional
shared context, run once and its KV cache reused for every row), in padded batches of one
forward pass each. No generation is involved.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class TokenScores:
    """Per scored token of one row (length = row length, or row length - 1 without context):
    `logprob` log p(x_t | x_<t); `mean`, `std` of log p(z | x_<t) over z ~ p(. | x_<t)
    (the moments min-k%++ normalizes by; empty unless asked for)."""

    logprob: torch.Tensor  # [T] float64
    mean: torch.Tensor  # [T] float64, or empty
    std: torch.Tensor  # [T] float64, or empty


@torch.no_grad()
def token_logprobs(
    model: torch.nn.Module,
    rows: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 64,
    *,
    context: Sequence[int] = (),
    moments: bool = False,
) -> list[TokenScores]:
    """Log-probability of each token of each row under teacher forcing.

    Without `context`, the first token of a row has nothing to condition on and is not
    scored. With `context` (token ids shared by every row, e.g. a canary prefix), the context
    is run once and every row token is scored given context + the row's earlier tokens.
    Rows are right-padded per batch; pads are never scored and never attended to.
    """
    if any(len(r) == 0 for r in rows):
        raise ValueError("token_logprobs: empty row")
    device = next(model.parameters()).device
    model.eval()
    cached = None
    if context:
        ctx = torch.tensor([list(context)], dtype=torch.long, device=device)
        cached = model(input_ids=ctx, use_cache=True)
    out: list[TokenScores] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):
            ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
            mask[i, : len(r)] = 1
        ids, mask = ids.to(device), mask.to(device)
        if cached is None:
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # [B, T-1, V]
            targets = ids[:, 1:]
            lengths = [len(r) - 1 for r in chunk]
        else:
            cache = copy.deepcopy(cached.cache)
            cache.batch_repeat_interleave(len(chunk))
            full_mask = torch.cat([mask.new_ones(len(chunk), len(context)), mask], dim=1)
            logits = model(input_ids=ids, attention_mask=full_mask, cache=cache).logits
            # The context's last position predicts each row's first token.
            first = cached.logits[:, -1:].expand(len(chunk), 1, -1)
            logits = torch.cat([first, logits[:, :-1]], dim=1)  # [B, T, V]
            targets = ids
            lengths = [len(r) for r in chunk]
        logp = torch.log_softmax(logits.double(), dim=-1)
        picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T']
        if moments:
            p = logp.exp()
            mean = (p * logp).sum(-1)
            std = ((p * logp.square()).sum(-1) - mean.square()).clamp(min=0).sqrt()
        for i, n in enumerate(lengths):
            out.append(
                TokenScores(
                    logprob=picked[i, :n].cpu(),
                    mean=mean[i, :n].cpu() if moments else torch.empty(0),
                    std=std[i, :n].cpu() if moments else torch.empty(0),
                )
            )
    return out


def split_continuation(
    tokenizer: PreTrainedTokenizerBase, prefix: str, continuation: str
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(context ids, continuation ids) cut from the tokenization of `prefix + continuation`
    as a whole, at the first token reaching past the prefix (as `split_record` cuts)."""
    enc = tokenizer(prefix + continuation, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    cut = sum(1 for _, end in offsets if end <= len(prefix))
    if cut == len(ids):
        raise ValueError(f"continuation {continuation!r} adds no token to the prefix")
    return tuple(ids[:cut]), tuple(ids[cut:])


def continuation_logprobs(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prefix: str,
    continuations: Sequence[str],
    batch_size: int = 256,
) -> np.ndarray:
    """log p(continuation | prefix) of each continuation (summed over its tokens, nats).

    Each candidate is tokenized with the prefix, as it would be in training; candidates
    whose context tokens agree (normally all) share one cached context forward pass."""
    groups: dict[tuple[int, ...], list[tuple[int, tuple[int, ...]]]] = defaultdict(list)
    for i, text in enumerate(continuations):
        context, cont = split_continuation(tokenizer, prefix, text)
        groups[context].append((i, cont))
    out = np.empty(len(continuations), dtype=np.float64)
    for context, members in groups.items():
        scores = token_logprobs(
            model,
            [c for _, c in members],
            tokenizer.pad_token_id,
            batch_size,
            context=context,
        )
        for (i, _), s in zip(members, scores, strict=True):
            out[i] = float(s.logprob.sum())
    return out
