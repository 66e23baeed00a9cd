"""Verbatim extraction: prompt with a canary's prefix, decode, compare to the secret.

Targets are cut from the tokenization of the *whole* record (as it was trained), at the
first token that reaches past the record's split character, so prefix and suffix tokens are
exactly the ones the model saw in training. Generation is batched with left padding and a
KV cache; every prompt decodes at most as many tokens as its suffix is long. Decoding is
plain: a continuation ends at the model's EOS, and one that ends before the suffix does is
scored against the whole suffix (shorter is never exact). `Decoding.suppress_eos` forbids
EOS until the suffix length instead (transformers' `min_new_tokens`): not the model's
greedy output, and it can only count more canaries as extracted.

Decoding strategies live in `DECODERS` (greedy, beam search, top-k/top-p sampling). Greedy
gives the attacker one guess; beam search returns its n beams and sampling n samples, and a
canary counts as extracted when any of them reproduces the secret (partial scores take the
best candidate). Partial memorization is measured in tokens: the fraction of secret
positions reproduced, the correct run from the start, and the normalized Levenshtein
similarity of the generated token sequence to the secret (rapidfuzz). Approximate
memorization (attacks/approximate.py) is sacrebleu sentence BLEU of the guess against the
secret, over token ids always and over characters when a `decode` (token ids -> text) is
given; several guesses take the best BLEU, like the partial scores.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
from rapidfuzz.distance import Levenshtein
from transformers import PreTrainedTokenizerBase

from attacks.approximate import APPROXIMATE_THRESHOLD, sentence_bleu_chars, sentence_bleu_tokens

Decode = Callable[[Sequence[int]], str]  # token ids -> text (a tokenizer's decode)


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
    # 1 - (token-level Levenshtein distance) / max(len), 1.0 for an exact reproduction
    edit_similarity: float = 0.0
    token_bleu: float = 0.0  # sentence BLEU over token ids, in [0, 1]
    char_bleu: float | None = None  # sentence BLEU over characters; None without a decode


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


def score(
    target: ExtractionTarget, generated: Sequence[int], decode: Decode | None = None
) -> ExtractionResult:
    """Exact and partial scores of one guess; character BLEU too when `decode` is given."""
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
        edit_similarity=edit_similarity(truth, gen),
        token_bleu=sentence_bleu_tokens(gen, truth),
        char_bleu=None if decode is None else char_bleu(decode(gen), decode(truth)),
    )


def char_bleu(generated: str, truth: str) -> float:
    """Character BLEU of a guess's text against the secret's text. A secret whose text is
    only whitespace has no characters to score (BLEU would be undefined): it counts as
    reproduced when the guess is blank too."""
    if not truth.strip():
        return float(not generated.strip())
    return sentence_bleu_chars(generated, truth)


def edit_similarity(truth: Sequence[int], generated: Sequence[int]) -> float:
    """Normalized Levenshtein similarity of two token sequences, in [0, 1]; unit: tokens."""
    return float(Levenshtein.normalized_similarity(list(truth), list(generated)))


def best_of(
    target: ExtractionTarget,
    candidates: Sequence[Sequence[int]],
    decode: Decode | None = None,
) -> ExtractionResult:
    """An attacker with several guesses: exact if any candidate is, and each partial score
    (BLEU included) the best over candidates; `generated_ids` is the best candidate (exact,
    then accuracy)."""
    scored = [score(target, c, decode) for c in candidates]
    best = max(scored, key=lambda r: (r.exact, r.token_accuracy, r.edit_similarity))
    return ExtractionResult(
        canary_id=target.canary_id,
        generated_ids=best.generated_ids,
        exact=any(r.exact for r in scored),
        token_accuracy=max(r.token_accuracy for r in scored),
        longest_match=max(r.longest_match for r in scored),
        edit_similarity=max(r.edit_similarity for r in scored),
        token_bleu=max(r.token_bleu for r in scored),
        char_bleu=_best_char_bleu(scored),
    )


def _best_char_bleu(results: Sequence[ExtractionResult]) -> float | None:
    values = [r.char_bleu for r in results]
    return None if any(v is None for v in values) else max(values)


@dataclass(frozen=True)
class Decoding:
    """How continuations are decoded; `name` is a key of DECODERS."""

    name: str = "greedy"
    num_beams: int = 4
    num_samples: int = 8
    top_k: int = 40
    top_p: float = 0.95
    temperature: float = 1.0
    seed: int = 0
    suppress_eos: bool = False  # forbid EOS until the suffix length (min_new_tokens)


def _greedy(d: Decoding) -> tuple[dict, int]:
    return {"do_sample": False, "num_beams": 1}, 1


def _beam(d: Decoding) -> tuple[dict, int]:
    return {"do_sample": False, "num_beams": d.num_beams, "num_return_sequences": d.num_beams}, (
        d.num_beams
    )


def _sampling(d: Decoding) -> tuple[dict, int]:
    kwargs = {
        "do_sample": True,
        "num_beams": 1,
        "top_k": d.top_k,
        "top_p": d.top_p,
        "temperature": d.temperature,
        "num_return_sequences": d.num_samples,
    }
    return kwargs, d.num_samples


# name -> (generate() keyword arguments, candidates returned per prompt)
DECODERS: dict[str, Callable[[Decoding], tuple[dict, int]]] = {
    "greedy": _greedy,
    "beam": _beam,
    "sampling": _sampling,
}
GREEDY = Decoding()


@torch.no_grad()
def continuations(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    new_tokens: int,
    pad_id: int,
    decoding: Decoding = GREEDY,
) -> list[list[list[int]]]:
    """Candidate continuations of each prompt (one for greedy, n for beam or sampling),
    each at most `new_tokens` long and ending before the model's first EOS (exactly
    `new_tokens` long under `decoding.suppress_eos`), from one left-padded batched
    `generate`."""
    kwargs, n = DECODERS[decoding.name](decoding)
    if decoding.suppress_eos:
        kwargs = {**kwargs, "min_new_tokens": new_tokens}
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    device = next(model.parameters()).device
    model.eval()
    with torch.random.fork_rng(devices=[]):  # sampling is seeded, the caller's RNG untouched
        torch.manual_seed(decoding.seed)
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=new_tokens,
            pad_token_id=pad_id,
            use_cache=True,
            **kwargs,
        )
    stops = eos_ids(model)
    # [len(prompts) * n, <= new_tokens], a prompt's n together; finished rows are padded
    flat = [until_eos(row, stops) for row in out[:, width:].tolist()]
    return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]


def eos_ids(model: torch.nn.Module) -> frozenset[int]:
    """The token ids that end generation (the model's generation config: one id or several)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return frozenset()
    return frozenset([eos] if isinstance(eos, int) else eos)


def until_eos(tokens: Sequence[int], stops: frozenset[int]) -> list[int]:
    """The tokens before the first end-of-sequence token (all of them when there is none)."""
    end = next((i for i, t in enumerate(tokens) if t in stops), len(tokens))
    return list(tokens[:end])


def greedy_continuations(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], new_tokens: int, pad_id: int
) -> list[list[int]]:
    """Greedy continuation of each prompt, at most `new_tokens` long (it ends before EOS), in
    one left-padded batch."""
    return [c[0] for c in continuations(model, prompts, new_tokens, pad_id)]


def extract(
    model: torch.nn.Module,
    targets: Sequence[ExtractionTarget],
    pad_id: int,
    batch_size: int = 64,
    decoding: Decoding = GREEDY,
    decode: Decode | None = None,
) -> list[ExtractionResult]:
    """Extraction of every target (character BLEU too when `decode` is given). Batches
    group targets of equal suffix length; under greedy decoding, whose first n tokens never
    depend on how many follow, all targets share batches decoded to the longest suffix and
    each is scored on its own length."""
    by_length: dict[int, list[ExtractionTarget]] = defaultdict(list)
    longest = max((len(t.suffix_ids) for t in targets), default=0)
    for t in targets:
        by_length[longest if decoding.name == "greedy" else len(t.suffix_ids)].append(t)
    results: dict[str, ExtractionResult] = {}
    for length, group in by_length.items():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            prompts = [t.prefix_ids for t in chunk]
            outs = continuations(model, prompts, length, pad_id, decoding)
            for t, candidates in zip(chunk, outs, strict=True):
                results[t.canary_id] = best_of(t, candidates, decode)
    return [results[t.canary_id] for t in targets]


@dataclass(frozen=True)
class ExtractionSummary:
    """Means over a group of canaries. `approx_*_rate`: the share whose BLEU is strictly
    above the threshold it was summarized with; the character-level ones are None when the
    results carry no character BLEU."""

    n: int
    exact_rate: float
    token_accuracy: float
    longest_match: float
    edit_similarity: float = 0.0
    token_bleu: float = 0.0
    approx_token_rate: float = 0.0
    char_bleu: float | None = None
    approx_char_rate: float | None = None

    def as_dict(self) -> dict[str, float]:
        out = {
            "n": self.n,
            "exact_rate": self.exact_rate,
            "token_accuracy": self.token_accuracy,
            "longest_match": self.longest_match,
            "edit_similarity": self.edit_similarity,
            "token_bleu": self.token_bleu,
            "approx_token_rate": self.approx_token_rate,
        }
        if self.char_bleu is not None:
            out |= {"char_bleu": self.char_bleu, "approx_char_rate": self.approx_char_rate}
        return out


def summarize(
    results: Sequence[ExtractionResult], bleu_threshold: float = APPROXIMATE_THRESHOLD
) -> ExtractionSummary:
    """Means over `results`; a canary is approximately memorized when its BLEU is strictly
    above `bleu_threshold` (0.75 in the study)."""
    n = len(results)
    if n == 0:
        return ExtractionSummary(0, 0.0, 0.0, 0.0, 0.0)
    chars = [r.char_bleu for r in results]
    with_chars = all(c is not None for c in chars)
    return ExtractionSummary(
        n=n,
        exact_rate=sum(r.exact for r in results) / n,
        token_accuracy=sum(r.token_accuracy for r in results) / n,
        longest_match=sum(r.longest_match for r in results) / n,
        edit_similarity=sum(r.edit_similarity for r in results) / n,
        token_bleu=sum(r.token_bleu for r in results) / n,
        approx_token_rate=sum(r.token_bleu > bleu_threshold for r in results) / n,
        char_bleu=sum(chars) / n if with_chars else None,
        approx_char_rate=sum(c > bleu_threshold for c in chars) / n if with_chars else None,
    )


def worst_case(per_setting: Sequence[Sequence[ExtractionResult]]) -> list[ExtractionResult]:
    """Per canary, the attacker's best over several settings (e.g. prefix lengths): the
    worst case for the defender. Each inner sequence holds the same canaries in order. Each
    score is its best over the settings, BLEU included, so a canary is approximately
    memorized in the worst case when any setting's guess clears the threshold."""
    return [
        ExtractionResult(
            canary_id=rs[0].canary_id,
            generated_ids=max(rs, key=lambda r: (r.exact, r.token_accuracy)).generated_ids,
            exact=any(r.exact for r in rs),
            token_accuracy=max(r.token_accuracy for r in rs),
            longest_match=max(r.longest_match for r in rs),
            edit_similarity=max(r.edit_similarity for r in rs),
            token_bleu=max(r.token_bleu for r in rs),
            char_bleu=_best_char_bleu(rs),
        )
        for rs in zip(*per_setting, strict=True)
    ]


def summarize_by(
    results: Sequence[ExtractionResult],
    key: Callable[[str], Hashable],
    bleu_threshold: float = APPROXIMATE_THRESHOLD,
) -> dict[Hashable, ExtractionSummary]:
    """Summaries per group, where `key` maps a canary id to its group (e.g. replica count)."""
    return {k: summarize(v, bleu_threshold) for k, v in group_by(results, key).items()}


def group_by(
    results: Sequence[ExtractionResult], key: Callable[[str], Hashable]
) -> dict[Hashable, list[ExtractionResult]]:
    """The results per group, groups in sorted order, where `key` maps a canary id to its
    group."""
    groups: dict[Hashable, list[ExtractionResult]] = defaultdict(list)
    for r in results:
        groups[key(r.canary_id)].append(r)
    return dict(sorted(groups.items()))
