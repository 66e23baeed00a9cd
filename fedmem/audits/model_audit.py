"""The per-round audit of a model: utility, extraction, exposure and membership inference.

Federated and centralized runs call `audit_model` after every round (and on the model before
fine-tuning, round 0), so both modes are measured by the same code; the server also calls it
on each client's returned state when `attack.client_view` is on. Each audit in `AUDITS` is
one function (config, model) -> AuditPart over the attacks in `attacks/`; which ones run is
read from the config in `enabled_audits`. Everything fixed for a run (targets, candidate
rows, the reference model's scores) is built once per config and cached.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from attacks.exposure import measure_exposure
from attacks.extraction import (
    Decoding,
    ExtractionResult,
    ExtractionTarget,
    extract,
    split_record,
    summarize,
    summarize_by,
    worst_case,
)
from attacks.likelihood import TokenScores, continuation_logprobs, token_logprobs
from attacks.membership import SCORES, Sample, roc
from fedmem.config import Config
from fedmem.data.canaries import Canary
from fedmem.data.federated import build_federated_data
from fedmem.data.qa import OPTION_LETTERS, format_qa, format_question
from fedmem.models.loading import load_base_model, load_tokenizer
from fedmem.training import encode_samples, mean_token_loss

GLOBAL = "global"  # the vantage point of any participant: the global model after a round


def client_vantage(client: int) -> str:
    """The vantage point of a server without secure aggregation: client `client`'s update
    applied to the previous global model (its returned trainable state)."""
    return f"client-{client}"


@dataclass(frozen=True)
class AuditPart:
    metrics: dict  # merged into the round's metrics row
    rows: list[dict] = field(default_factory=list)  # per-item details (one jsonl file)
    roc: dict = field(default_factory=dict)  # ROC points to plot (membership)


@dataclass(frozen=True)
class RoundAudit:
    metrics: dict  # aggregated numbers for metrics.jsonl
    rows: dict[str, list[dict]] = field(default_factory=dict)  # file stem -> per-item rows
    roc: dict = field(default_factory=dict)  # score -> population -> {"fpr", "tpr"}


def audit_model(config: Config, model: torch.nn.Module, vantage: str = GLOBAL) -> RoundAudit:
    metrics: dict = {"vantage": vantage}
    rows: dict[str, list[dict]] = {}
    curves: dict = {}
    for name in enabled_audits(config):
        part = AUDITS[name](config, model)
        metrics.update(part.metrics)
        if part.rows:
            rows[name] = [{"vantage": vantage, **r} for r in part.rows]
        curves.update(part.roc)
    return RoundAudit(metrics, rows, curves)


def enabled_audits(config: Config) -> list[str]:
    names = ["utility", "extraction"]
    if config.attack.exposure.enabled and config.canaries.exposure_per_count:
        names.append("exposure")
    if config.attack.membership.enabled:
        names.append("membership")
    return names


def _canaries(config: Config) -> dict[str, Canary]:
    return {c.canary_id: c for c in build_federated_data(config, load_tokenizer).canaries}


# ------------------------------------------------------------------------------ utility


@lru_cache(maxsize=4)
def heldout_rows(config: Config) -> tuple[list[int], ...]:
    tokenizer = load_tokenizer(config)
    texts = build_federated_data(config, load_tokenizer).heldout_texts
    return tuple(encode_samples(tokenizer, texts, config.training.max_seq_len))


@lru_cache(maxsize=4)
def qa_targets(config: Config) -> tuple[ExtractionTarget, ...]:
    """Each held-out pair as (question prompt -> answer tokens), cut as trained."""
    tokenizer = load_tokenizer(config)
    limit = config.training.max_seq_len
    return tuple(
        split_record(tokenizer, f"q{i}", format_qa(p), len(format_question(p)), limit, limit)
        for i, p in enumerate(build_federated_data(config, load_tokenizer).heldout)
    )


def audit_utility(config: Config, model: torch.nn.Module) -> AuditPart:
    """Held-out loss and perplexity; QA answer match by greedy generation; multiple-choice
    accuracy by the likelihood of each option's letter after the question."""
    tokenizer = load_tokenizer(config)
    pad_id = tokenizer.pad_token_id
    loss = mean_token_loss(model, heldout_rows(config), config.training.batch_size, pad_id)
    heldout = build_federated_data(config, load_tokenizer).heldout
    answers = extract(model, qa_targets(config), pad_id, config.attack.batch_size)
    by_source: dict[str, list[bool]] = defaultdict(list)
    for pair, result in zip(heldout, answers, strict=True):
        by_source[pair.source].append(result.exact)
    mcq = [
        _option_pick(model, tokenizer, format_question(p), len(p.options)) == p.answer
        for p in heldout
        if p.options
    ]
    return AuditPart(
        {
            "heldout_loss": loss,
            "heldout_perplexity": math.exp(min(loss, 50.0)),
            "utility": {
                "qa_accuracy": sum(r.exact for r in answers) / max(len(answers), 1),
                "qa_by_source": {k: sum(v) / len(v) for k, v in sorted(by_source.items())},
                "mcq_accuracy": sum(mcq) / len(mcq) if mcq else None,
                "mcq_n": len(mcq),
            },
        }
    )


def _option_pick(model, tokenizer, question: str, n_options: int) -> str:
    letters = OPTION_LETTERS[:n_options]
    logprobs = continuation_logprobs(model, tokenizer, question, [f" {x}" for x in letters])
    return letters[int(logprobs.argmax())]


# --------------------------------------------------------------------------- extraction


@lru_cache(maxsize=16)
def extraction_targets(config: Config, prefix_tokens: int | None = None) -> tuple:
    tokenizer = load_tokenizer(config)
    return tuple(
        split_record(
            tokenizer,
            c.canary_id,
            c.text,
            c.split,
            prefix_tokens or config.attack.prefix_tokens,
            config.attack.suffix_tokens,
        )
        for c in build_federated_data(config, load_tokenizer).canaries
    )


def decoding_for(config: Config, name: str) -> Decoding:
    a = config.attack
    return Decoding(name, a.num_beams, a.num_samples, a.top_k, a.top_p, a.temperature, config.seed)


def audit_extraction(config: Config, model: torch.nn.Module) -> AuditPart:
    """Every decoding x prefix length; the first decoding at `prefix_tokens` is the headline
    (top-level rates, by replica count and by owning client). With a prefix sweep, each
    decoding also reports the mean over lengths and the worst case (per canary, the best
    the attacker gets from any length)."""
    tokenizer = load_tokenizer(config)
    canaries = _canaries(config)
    lengths = config.attack.prefix_lengths()
    rows: list[dict] = []
    variants: dict[str, dict] = {}
    headline: list[ExtractionResult] = []
    for name in config.attack.decoding:
        done: dict[tuple, list[ExtractionResult]] = {}  # long prefixes clip to the same header
        per_length = []
        for length in lengths:
            targets = extraction_targets(config, length)
            if targets not in done:
                done[targets] = extract(
                    model,
                    targets,
                    tokenizer.pad_token_id,
                    config.attack.batch_size,
                    decoding_for(config, name),
                )
            results = done[targets]
            per_length.append(results)
            rows += [
                {
                    "decoding": name,
                    "prefix_tokens": length,
                    "canary_id": r.canary_id,
                    "replicas": canaries[r.canary_id].replicas,
                    "exact": r.exact,
                    "token_accuracy": r.token_accuracy,
                    "edit_similarity": r.edit_similarity,
                    "longest_match": r.longest_match,
                    "generated": tokenizer.decode(list(r.generated_ids)),
                }
                for r in results
            ]
        if not headline:
            headline = per_length[0]
        by_length = {
            str(n): extraction_metrics(rs, canaries, by_client=False)
            for n, rs in zip(lengths, per_length, strict=True)
        }
        variant: dict = {"prefix": by_length}
        if len(lengths) > 1:
            variant["over_prefixes"] = {
                "mean": _mean_tree(list(by_length.values())),
                "worst": extraction_metrics(worst_case(per_length), canaries, by_client=False),
            }
        variants[name] = variant
    metrics = {
        **extraction_metrics(headline, canaries),
        "decoding": config.attack.decoding[0],
        "prefix_tokens": lengths[0],
        "variants": variants,
    }
    return AuditPart({"extraction": metrics}, rows)


def extraction_metrics(
    results: Sequence[ExtractionResult], canaries: dict, by_client: bool = True
) -> dict:
    """Rates over injected canaries, by replica count (0 = never-injected twins), by client."""
    injected = [r for r in results if canaries[r.canary_id].replicas > 0]

    def owner(cid: str) -> str:
        clients = canaries[cid].clients
        return str(max(set(clients), key=clients.count)) if clients else "none"

    out = {
        "injected": summarize(injected).as_dict(),
        "by_replicas": {
            str(k): s.as_dict()
            for k, s in summarize_by(results, lambda cid: canaries[cid].replicas).items()
        },
    }
    if by_client:
        out["by_client"] = {k: s.as_dict() for k, s in summarize_by(injected, owner).items()}
    return out


def _mean_tree(trees: list[dict]) -> dict:
    """Element-wise mean of equally shaped nested dicts of numbers."""
    first = trees[0]
    return {
        k: _mean_tree([t[k] for t in trees])
        if isinstance(first[k], dict)
        else sum(t[k] for t in trees) / len(trees)
        for k in first
    }


# ----------------------------------------------------------------------------- exposure


def audit_exposure(config: Config, model: torch.nn.Module) -> AuditPart:
    """Exposure of every exposure canary's digit secret, by replica count (0 = twins)."""
    tokenizer = load_tokenizer(config)
    ex = config.attack.exposure
    rows = []
    for i, c in enumerate(build_federated_data(config, load_tokenizer).exposure_canaries):
        # The split sits before the secret's leading space; the candidates vary the digits.
        r = measure_exposure(
            model,
            tokenizer,
            c.canary_id,
            c.text[: c.split + 1],
            c.text[c.split + 1 :],
            max_enumerate=ex.max_enumerate,
            sample_size=ex.sample_size,
            seed=config.seed * 1_000_003 + i,
            estimator=ex.estimator,
        )
        rows.append(
            {
                "canary_id": c.canary_id,
                "replicas": c.replicas,
                "exposure": r.exposure,
                "method": r.method,
                "rank": r.rank,
                "space": r.space,
                "candidates": r.candidates,
            }
        )
    groups: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        groups[row["replicas"]].append(row["exposure"])
    injected = [row["exposure"] for row in rows if row["replicas"] > 0]
    metrics = {
        "space": rows[0]["space"],
        "method": rows[0]["method"],
        "injected": _stats(injected),
        "by_replicas": {str(k): _stats(v) for k, v in sorted(groups.items())},
    }
    return AuditPart({"exposure": metrics}, rows)


def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "mean": None, "max": None}
    return {"n": len(values), "mean": sum(values) / len(values), "max": max(values)}


# --------------------------------------------------------------------------- membership


@dataclass(frozen=True)
class MembershipSample:
    sample_id: str  # canary id, or "train-<i>" / "heldout-<i>" for QA samples
    kind: str  # "canary" or "qa"
    member: bool
    replicas: int | None  # canaries only
    text: str
    ids: tuple[int, ...]  # as trained: the text's tokens and EOS, truncated


@lru_cache(maxsize=4)
def membership_samples(config: Config) -> tuple[MembershipSample, ...]:
    """Members: injected canaries and a seeded sample of training QA samples; non-members:
    the never-injected twins and the held-out QA samples."""
    data = build_federated_data(config, load_tokenizer)
    tokenizer = load_tokenizer(config)
    canary_texts = {c.text for c in (*data.canaries, *data.exposure_canaries)}
    training = sorted({t for t in data.pooled_texts if t not in canary_texts})
    heldout = [format_qa(p) for p in data.heldout]
    n = min(config.attack.membership.qa_members or len(heldout), len(training))
    members = random.Random(config.seed * 1_000_003 + 7).sample(training, n)
    entries = [("canary", c.canary_id, c.injected, c.replicas, c.text) for c in data.canaries]
    entries += [("qa", f"train-{i}", True, None, t) for i, t in enumerate(members)]
    entries += [("qa", f"heldout-{i}", False, None, t) for i, t in enumerate(heldout)]
    ids = encode_samples(tokenizer, [e[4] for e in entries], config.training.max_seq_len)
    return tuple(
        MembershipSample(sid, kind, member, replicas, text, tuple(row))
        for (kind, sid, member, replicas, text), row in zip(entries, ids, strict=True)
    )


@lru_cache(maxsize=2)
def reference_scores(config: Config) -> tuple[TokenScores, ...]:
    """Token scores under the model before fine-tuning (round 0): the base model, which
    also equals round 0 under LoRA, whose fresh adapters change nothing."""
    rows = [s.ids for s in membership_samples(config)]
    pad_id = load_tokenizer(config).pad_token_id
    return tuple(token_logprobs(load_base_model(config), rows, pad_id, config.training.batch_size))


def audit_membership(config: Config, model: torch.nn.Module) -> AuditPart:
    """Every configured score over all samples; AUC and TPR at low FPR for all samples,
    canaries only and QA samples only, and AUC per replica count (its injected canaries
    against all twins). ROC points go to the run folder for plotting."""
    mia = config.attack.membership
    samples = membership_samples(config)
    pad_id = load_tokenizer(config).pad_token_id
    scores = token_logprobs(
        model, [s.ids for s in samples], pad_id, config.training.batch_size, moments=True
    )
    ref = reference_scores(config) if "reference" in mia.scores else (None,) * len(samples)
    inputs = [Sample(s.text, t, r) for s, t, r in zip(samples, scores, ref, strict=True)]
    values = {name: [SCORES[name](x, mia.min_k) for x in inputs] for name in mia.scores}
    populations = {
        "all": list(range(len(samples))),
        "canaries": [i for i, s in enumerate(samples) if s.kind == "canary"],
        "qa": [i for i, s in enumerate(samples) if s.kind == "qa"],
    }
    twins = [i for i, s in enumerate(samples) if s.kind == "canary" and not s.member]
    metrics: dict = {
        "members": sum(s.member for s in samples),
        "nonmembers": sum(not s.member for s in samples),
        "min_k": mia.min_k,
        "scores": {},
    }
    curves: dict = {}
    for name, v in values.items():
        entry, curves[name] = {}, {}
        for pop, idx in populations.items():
            if not any(samples[i].member for i in idx) or all(samples[i].member for i in idx):
                continue
            curve = roc([v[i] for i in idx], [samples[i].member for i in idx])
            entry[pop] = curve.summary()
            curves[name][pop] = {"fpr": curve.fpr, "tpr": curve.tpr}
        entry["by_replicas"] = {}
        for r in config.canaries.replica_counts:
            idx = [i for i, s in enumerate(samples) if s.replicas == r] + twins
            entry["by_replicas"][str(r)] = roc(
                [v[i] for i in idx], [samples[i].member for i in idx]
            ).auc
        metrics["scores"][name] = entry
    rows = [
        {
            "sample_id": s.sample_id,
            "kind": s.kind,
            "member": s.member,
            "replicas": s.replicas,
            "scores": {name: v[i] for name, v in values.items()},
        }
        for i, s in enumerate(samples)
    ]
    return AuditPart({"membership": metrics}, rows, curves)


# (config, model) -> its part of the round's audit
AUDITS: dict[str, Callable[[Config, torch.nn.Module], AuditPart]] = {
    "utility": audit_utility,
    "extraction": audit_extraction,
    "exposure": audit_exposure,
    "membership": audit_membership,
}
