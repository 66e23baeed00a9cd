"""The per-round audit of a global model: held-out utility and canary extraction.

Federated and centralized runs call `audit_model` after every round (and on the model before
fine-tuning, round 0), so both modes are measured by the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from attacks.extraction import (
    ExtractionResult,
    ExtractionTarget,
    extract,
    split_record,
    summarize,
    summarize_by,
)
from fedmem.config import Config
from fedmem.dataset import build_federated_data
from fedmem.models import load_tokenizer
from fedmem.training import encode_samples, mean_token_loss


@dataclass(frozen=True)
class RoundAudit:
    metrics: dict  # aggregated numbers for metrics.jsonl
    canary_results: list[dict]  # one row per canary


@lru_cache(maxsize=4)
def extraction_targets(config: Config) -> tuple[ExtractionTarget, ...]:
    tokenizer = load_tokenizer(config)
    return tuple(
        split_record(
            tokenizer,
            c.canary_id,
            c.text,
            c.split,
            config.attack.prefix_tokens,
            config.attack.suffix_tokens,
        )
        for c in build_federated_data(config).canaries
    )


@lru_cache(maxsize=4)
def heldout_rows(config: Config) -> tuple[list[int], ...]:
    tokenizer = load_tokenizer(config)
    texts = build_federated_data(config).heldout_texts
    return tuple(encode_samples(tokenizer, texts, config.training.max_seq_len))


def audit_model(config: Config, model: torch.nn.Module) -> RoundAudit:
    tokenizer = load_tokenizer(config)
    pad_id = tokenizer.pad_token_id
    loss = mean_token_loss(model, heldout_rows(config), config.training.batch_size, pad_id)
    results = extract(model, extraction_targets(config), pad_id, config.attack.batch_size)
    canaries = {c.canary_id: c for c in build_federated_data(config).canaries}
    return RoundAudit(
        metrics={
            "heldout_loss": loss,
            "heldout_perplexity": math.exp(min(loss, 50.0)),
            "extraction": extraction_metrics(results, canaries),
        },
        canary_results=[
            {
                "canary_id": r.canary_id,
                "replicas": canaries[r.canary_id].replicas,
                "exact": r.exact,
                "token_accuracy": r.token_accuracy,
                "longest_match": r.longest_match,
                "generated": tokenizer.decode(list(r.generated_ids)),
            }
            for r in results
        ],
    )


def extraction_metrics(results: list[ExtractionResult], canaries: dict) -> dict:
    """Rates over injected canaries, by replica count (0 = never-injected twins), by client."""
    injected = [r for r in results if canaries[r.canary_id].replicas > 0]

    def owner(cid: str) -> str:
        clients = canaries[cid].clients
        return str(max(set(clients), key=clients.count)) if clients else "none"

    return {
        "injected": summarize(injected).as_dict(),
        "by_replicas": {
            str(k): s.as_dict()
            for k, s in summarize_by(results, lambda cid: canaries[cid].replicas).items()
        },
        "by_client": {k: s.as_dict() for k, s in summarize_by(injected, owner).items()},
    }
