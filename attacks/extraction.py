"""Verbatim extraction: prompt with a canary's prefix, greedy-decode, compare to the secret.

Targets are cut from the tokenization of the *whole* record (as it was trained), at the
first token that reaches past the record's split character, so prefix and suffix tokens are
exactly the ones the model saw in training. Generation is batched with left padding and a
KV cache; every prompt decodes exactly as many tokens as its suffix is long.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class ExtractionTarget:
    canary_id: str
    prefix_ids: tuple[int, ...]  # what the attacker prompts with, ending at the split
    suffix_ids: tuple[int, ...]  # the secret continuation to reproduce


@dataclass(frozen=True)
class ExtractionResult:
    canary_id: str
    generated_ids: tuple[int, ...]
    exact: bool  # every suffix token reproduced
    token_accuracy: float  # fraction of suffix positions where the generated token is right
    longest_match: int  # length of the correct run from the first suffix token


def split_record(
    tokenizer: PreTrainedTokenizerBase,
    canary_id: str,
    text: str,
    split: int,
    prefix_tokens: int,
    suffix_tokens: int,
) -> ExtractionTarget:
    enc = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    # Tokens ending at or before the split are known to the attacker (specials have end 0).
    cut = sum(1 for _, end in offsets if end <= split)
    prefix = ids[max(0, cut - prefix_tokens) : cut]
    suffix = ids[cut : cut + suffix_tokens]
    if not prefix or not suffix:
        raise ValueError(f"canary {canary_id}: split {split} leaves an empty prefix or suffix")
    return ExtractionTarget(canary_id, tuple(prefix), tuple(suffix))


def score(target: ExtractionTarget, generated: Sequence[int]) -> ExtractionResult:
    truth = target.suffix_ids
    gen = tuple(generated[: len(truth)])
    hits = [i < len(gen) and gen[i] == t for i, t in enumerate(truth)]
    longest = next((i for i, h in enumerate(hits) if not h), len(truth))
    return ExtractionResult(
        canary_id=target.canary_id,
        generated_ids=gen,
        exact=all(hits),
        token_accuracy=sum(hits) / len(truth),
        longest_match=longest,
    )


@torch.no_grad()
def greedy_continuations(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    new_tokens: int,
    pad_id: int,
) -> list[list[int]]:
    """Greedy continuation of each prompt, `new_tokens` long, in one left-padded batch."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    device = next(model.parameters()).device
    model.eval()
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_id,
        use_cache=True,
    )
    return out[:, width:].tolist()


def extract(
    model: torch.nn.Module,
    targets: Sequence[ExtractionTarget],
    pad_id: int,
    batch_size: int = 64,
) -> list[ExtractionResult]:
    """Greedy extraction of every target; batches group targets of equal suffix length."""
    by_length: dict[int, list[ExtractionTarget]] = defaultdict(list)
    for t in targets:
        by_length[len(t.suffix_ids)].append(t)
    results: dict[str, ExtractionResult] = {}
    for length, group in by_length.items():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            outs = greedy_continuations(model, [t.prefix_ids for t in chunk], length, pad_id)
            for t, gen in zip(chunk, outs, strict=True):
                results[t.canary_id] = score(t, gen)
    return [results[t.canary_id] for t in targets]


@dataclass(frozen=True)
class ExtractionSummary:
    n: int
    exact_rate: float
    token_accuracy: float
    longest_match: float

    def as_dict(self) -> dict[str, float]:
        return {
            "n": self.n,
            "exact_rate": self.exact_rate,
            "token_accuracy": self.token_accuracy,
            "longest_match": self.longest_match,
        }


def summarize(results: Sequence[ExtractionResult]) -> ExtractionSummary:
    n = len(results)
    if n == 0:
        return ExtractionSummary(0, 0.0, 0.0, 0.0)
    return ExtractionSummary(
        n=n,
        exact_rate=sum(r.exact for r in results) / n,
        token_accuracy=sum(r.token_accuracy for r in results) / n,
        longest_match=sum(r.longest_match for r in results) / n,
    )


def summarize_by(
    results: Sequence[ExtractionResult], key: Callable[[str], Hashable]
) -> dict[Hashable, ExtractionSummary]:
    """Summaries per group, where `key` maps a canary id to its group (e.g. replica count)."""
    groups: dict[Hashable, list[ExtractionResult]] = defaultdict(list)
    for r in results:
        groups[key(r.canary_id)].append(r)
    return {k: summarize(v) for k, v in sorted(groups.items())}
