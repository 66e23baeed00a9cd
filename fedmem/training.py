"""The one local training loop (FL clients and the centralized baseline) and held-out loss.

Each sample is one row (never packed with others), so a canary copy is a training record of
its own; rows are padded per batch to the longest row and pads carry no loss. The loop
computes a batch in groups of rows of similar length (`length_groups`), whose gradients add
up to the whole batch's (per-sample gradients, under DP-SGD): generated QA rows are a third
of a canary's length, and one padded batch spent about half its compute on pads. A label mask
(goldfish) can take further training positions out of the loss, and so can each row's
prompt length (answer-only loss); evaluation never uses either. Batches are built on the
cpu and moved to the model's device.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from fedmem.config import TrainingConfig

IGNORE_INDEX = -100
# One more forward and backward pass costs about as much as this many padded tokens of the
# tiny Llama on a CPU core (what `length_groups` weighs a further group against).
GROUP_OVERHEAD_TOKENS = 64

# A row's token ids -> one flag per position, True = the position's label stays in the loss.
LabelMask = Callable[[Sequence[int]], list[bool]]


def encode_samples(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_len: int
) -> list[list[int]]:
    """Token ids of each text followed by EOS, truncated to `max_len`."""
    eos = tokenizer.eos_token_id
    encoded = tokenizer(list(texts))["input_ids"]
    return [(ids + [eos])[:max_len] for ids in encoded]


def encode_answer_rows(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    prompt_chars: Sequence[int],
    max_len: int,
) -> tuple[list[list[int]], list[int]]:
    """Rows for answer-only loss: token ids of each text followed by EOS, and how many
    leading tokens belong to its prompt (`text[:prompt_chars]`; 0 = no prompt, e.g. a
    canary). Tokens are cut from the whole text, as `encode_samples` does. A row longer
    than `max_len` loses tokens from its start when it has a prompt (so its answer stays
    in the row), from its end when it has none."""
    if len(texts) != len(prompt_chars):
        raise ValueError(f"{len(texts)} texts but {len(prompt_chars)} prompt lengths")
    eos = tokenizer.eos_token_id
    enc = tokenizer(list(texts), return_offsets_mapping=True)
    rows, prompts = [], []
    for ids, offsets, chars in zip(
        enc["input_ids"], enc["offset_mapping"], prompt_chars, strict=True
    ):
        ids = ids + [eos]
        # Tokens ending at or before the prompt's last character (specials have end 0).
        prompt = sum(1 for _, end in offsets if end <= chars) if chars else 0
        if len(ids) > max_len and prompt:
            drop = len(ids) - max_len
            ids, prompt = ids[drop:], max(0, prompt - drop)
        rows.append(ids[:max_len])
        prompts.append(min(prompt, max_len))
    return rows, prompts


def encode_training_rows(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    prompt_chars: Sequence[int],
    cfg: TrainingConfig,
) -> tuple[list[list[int]], list[int] | None]:
    """Training rows and, under `answer_only_loss`, each row's prompt length in tokens
    (None otherwise: every real token is trained on)."""
    if cfg.answer_only_loss:
        return encode_answer_rows(tokenizer, texts, prompt_chars, cfg.max_seq_len)
    return encode_samples(tokenizer, texts, cfg.max_seq_len), None


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # [B, T] token ids, right-padded
    attention_mask: torch.Tensor  # [B, T] 1 for real tokens
    labels: torch.Tensor  # [B, T] input_ids with pads (and masked positions) = IGNORE_INDEX

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels)))

    def targets(self) -> int:
        """Next-token targets in the loss (labels past the first position, not ignored)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())



def collate(
    rows: Sequence[list[int]],
    pad_id: int,
    label_mask: LabelMask | None = None,
    prompt_lengths: Sequence[int] | None = None,
) -> Batch:
    """Right-padded batch; a label is kept when it is a real token, the label mask keeps
    it, and it lies past the row's prompt (`prompt_lengths[i]` leading tokens, if given)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    keep = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
        keep[i, : len(r)] = torch.tensor(label_mask(r) if label_mask else [True] * len(r))
        if prompt_lengths is not None:
            keep[i, : prompt_lengths[i]] = False
    labels = ids.masked_fill(~keep, IGNORE_INDEX)
    return Batch(ids, mask, labels)


def shuffled_index_batches(n_rows: int, batch_size: int, rng: random.Random) -> Iterator[list[int]]:
    """One epoch of row indices: shuffled, then cut into batches of `batch_size`."""
    order = list(range(n_rows))
    rng.shuffle(order)
    for start in range(0, n_rows, batch_size):
        yield order[start : start + batch_size]


def length_groups(
    lengths: Sequence[int], overhead: int = GROUP_OVERHEAD_TOKENS
) -> list[list[int]]:
    """Positions 0..n-1 of one batch's rows, grouped so that padding each group to its
    longest row costs least: padded tokens plus `overhead` per group (exact, by dynamic
    programming over the rows sorted by length)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = [0.0] + [math.inf] * len(order)  # best[e]: cost of the shortest e rows
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        widest = lengths[order[end - 1]]
        for start in range(end):
            cost = best[start] + (end - start) * widest + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], len(order)
    while end:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


def record_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B] mean next-token loss of each row over its own real tokens (0 for a row without
    targets): a row's loss depends on that row alone, as per-record clipping requires."""
    targets = labels[:, 1:]
    tokens = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(),
        targets,
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return tokens.sum(dim=1) / (targets != IGNORE_INDEX).sum(dim=1).clamp(min=1)


def planned_steps(cfg: TrainingConfig, n_rows: int) -> int:
    """Optimizer steps one call of `train_local` takes on `n_rows` rows."""
    return cfg.local_steps or cfg.local_epochs * math.ceil(n_rows / cfg.batch_size)


class StepVariant:
    """How the one loop samples batches, computes the loss and steps: the plain variant
    (shuffled fixed-size batches, the batch's token-mean loss, a global grad-norm clip).
    Mitigations that change these (DP-SGD) subclass it; the loop itself stays the same."""

    def __init__(
        self,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        n_rows: int,
        cfg: TrainingConfig,
    ) -> None:
        self.module = module
        self.optimizer = optimizer
        self.n_rows = n_rows
        self.batch_size = cfg.batch_size
        self.grad_clip = cfg.grad_clip

    def epoch(self, rng: random.Random) -> Iterable[list[int]]:
        """Row indices of each step of one epoch."""
        return shuffled_index_batches(self.n_rows, self.batch_size, rng)

    def groups(self, lengths: Sequence[int]) -> list[list[int]]:
        """Positions of one batch's rows computed together (see `length_groups`)."""
        return length_groups(lengths)

    def loss(self, batch: Batch) -> torch.Tensor:
        return self.module(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels
        ).loss

    def backward(self, parts: Sequence[Batch]) -> float:
        """Gradients of the token-mean loss over all parts of one batch, one part at a time
        (each part's mean weighted by its share of the targets); returns that loss."""
        if len(parts) == 1:
            loss = self.loss(parts[0])
            loss.backward()
            return float(loss.detach())
        counts = [part.targets() for part in parts]
        total, value = sum(counts), 0.0
        for part, count in zip(parts, counts, strict=True):
            if count:
                loss = self.loss(part) * (count / total)
                loss.backward()
                value += float(loss.detach())
        return value if total else math.nan

    def empty_batch(self) -> None:
        """Prepare a step on a batch that sampled no row (only sampled batches can be empty)."""
        raise RuntimeError("the plain variant never draws an empty batch")

    def step(self) -> None:
        if self.grad_clip > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        """Leave the trained model as an ordinary module again."""


# (model, its optimizer, number of rows, training config) -> the variant for one call
VariantFactory = Callable[
    [torch.nn.Module, torch.optim.Optimizer, int, TrainingConfig], StepVariant
]


@dataclass(frozen=True)
class TrainResult:
    mean_loss: float  # over the steps whose batch was not empty
    steps: int
    examples: int


def train_local(
    model: torch.nn.Module,
    rows: Sequence[list[int]],
    cfg: TrainingConfig,
    pad_id: int,
    seed: int,
    variant: VariantFactory = StepVariant,
    *,
    label_mask: LabelMask | None = None,
    prompt_lengths: Sequence[int] | None = None,
) -> TrainResult:
    """Train in place for `local_steps` steps, or `local_epochs` epochs when that is 0;
    `label_mask` takes training positions out of the loss (None: every real token counts),
    and so do the first `prompt_lengths[i]` positions of row i (answer-only loss)."""
    if not rows:
        raise ValueError("train_local: no training rows")
    if prompt_lengths is not None and len(prompt_lengths) != len(rows):
        raise ValueError(f"train_local: {len(rows)} rows but {len(prompt_lengths)} prompts")
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device  # batches are built on the CPU and moved to the model
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = planned_steps(cfg, len(rows))
    model.train()
    steps = variant(model, optimizer, len(rows), cfg)
    losses: list[float] = []
    examples = done = 0
    try:
        while done < total_steps:
            for indices in steps.epoch(rng):
                if indices:
                    parts = [
                        collate(
                            [rows[indices[i]] for i in group],
                            pad_id,
                            label_mask,
                            None if prompt_lengths is None
                            else [prompt_lengths[indices[i]] for i in group],
                        ).to(device)
                        for group in steps.groups([len(rows[i]) for i in indices])
                    ]
                    losses.append(steps.backward(parts))
                else:
                    steps.empty_batch()
                steps.step()
                done += 1
                examples += len(indices)
                if done == total_steps:
                    break
    finally:
        steps.close()
    model.eval()
    mean_loss = sum(losses) / len(losses) if losses else math.nan
    return TrainResult(mean_loss=mean_loss, steps=done, examples=examples)


@torch.no_grad()
def mean_token_loss(
    model: torch.nn.Module, rows: Sequence[list[int]], batch_size: int, pad_id: int
) -> float:
    """Average next-token cross-entropy over all real tokens of `rows`."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size], pad_id).to(device)
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
