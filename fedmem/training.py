"""The one local training loop (FL clients and the centralized baseline) and held-out loss.

Each sample is one row (never packed with others), so a canary copy is a training record of
its own; rows are padded per batch to the longest row and pads carry no loss. A label mask
(goldfish) can take further training positions out of the loss; evaluation never uses one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from fedmem.config import TrainingConfig

IGNORE_INDEX = -100

# A row's token ids -> one flag per position, True = the position's label stays in the loss.
LabelMask = Callable[[Sequence[int]], list[bool]]


def encode_samples(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_len: int
) -> list[list[int]]:
    """Token ids of each text followed by EOS, truncated to `max_len`."""
    eos = tokenizer.eos_token_id
    encoded = tokenizer(list(texts))["input_ids"]
    return [(ids + [eos])[:max_len] for ids in encoded]


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # [B, T] token ids, right-padded
    attention_mask: torch.Tensor  # [B, T] 1 for real tokens
    labels: torch.Tensor  # [B, T] input_ids with pads (and masked positions) = IGNORE_INDEX


def collate(rows: Sequence[list[int]], pad_id: int, label_mask: LabelMask | None = None) -> Batch:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    keep = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
        keep[i, : len(r)] = torch.tensor(label_mask(r) if label_mask else [True] * len(r))
    labels = ids.masked_fill(~keep, IGNORE_INDEX)
    return Batch(ids, mask, labels)


def shuffled_batches(
    rows: Sequence[list[int]],
    batch_size: int,
    rng: random.Random,
    pad_id: int,
    label_mask: LabelMask | None = None,
) -> Iterator[Batch]:
    order = list(range(len(rows)))
    rng.shuffle(order)
    for start in range(0, len(order), batch_size):
        yield collate([rows[i] for i in order[start : start + batch_size]], pad_id, label_mask)


@dataclass(frozen=True)
class TrainResult:
    mean_loss: float
    steps: int
    examples: int


def train_local(
    model: torch.nn.Module,
    rows: Sequence[list[int]],
    cfg: TrainingConfig,
    pad_id: int,
    seed: int,
    *,
    label_mask: LabelMask | None = None,
) -> TrainResult:
    """Train in place for `local_steps` steps, or `local_epochs` epochs when that is 0;
    `label_mask` takes training positions out of the loss (None: every real token counts)."""
    if not rows:
        raise ValueError("train_local: no training rows")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total_steps = cfg.local_steps or cfg.local_epochs * steps_per_epoch
    model.train()
    losses: list[float] = []
    examples = 0
    while len(losses) < total_steps:
        for batch in shuffled_batches(rows, cfg.batch_size, rng, pad_id, label_mask):
            out = model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels
            )
            out.loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(out.loss.detach()))
            examples += len(batch.input_ids)
            if len(losses) == total_steps:
                break
    model.eval()
    return TrainResult(mean_loss=sum(losses) / len(losses), steps=len(losses), examples=examples)


@torch.no_grad()
def mean_token_loss(
    model: torch.nn.Module, rows: Sequence[list[int]], batch_size: int, pad_id: int
) -> float:
    """Average next-token cross-entropy over all real tokens of `rows`."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size], pad_id)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        targets = batch.labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)).float(),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        total += float(loss)
        count += int((targets != IGNORE_INDEX).sum())
    return total / max(count, 1)
