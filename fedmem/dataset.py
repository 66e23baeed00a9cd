"""From config to data: QA samples split into held-out and per-client training sets, with
canaries injected into the training sets of their clients.

The held-out split is taken before anything is injected, so no canary copy can land in it
(the reference study split after duplication). Everything is a pure function of the config,
so the server and every client process rebuild identical data without shipping it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from fedmem.audit_records import AuditRecord, audit_records, inject_audit_records
from fedmem.canaries import Canary, inject, make_canaries
from fedmem.config import Config
from fedmem.partition import partition_by_source, partition_dirichlet, partition_iid
from fedmem.qa import QAPair, format_qa, generate_qa, load_qa_jsonl

# Independent seed streams, so changing e.g. the canaries leaves the QA split untouched.
_SPLIT_STREAM, _PARTITION_STREAM, _CANARY_STREAM, _INJECT_STREAM = 1, 2, 3, 4
_AUDIT_RECORD_STREAM, _AUDIT_INJECT_STREAM = 5, 6


def _seed(config: Config, stream: int) -> int:
    return config.seed * 1_000_003 + stream


@dataclass(frozen=True)
class FederatedData:
    client_texts: tuple[tuple[str, ...], ...]  # training samples per client, canaries inside
    heldout: tuple[QAPair, ...]  # never trained on, canary-free
    canaries: tuple[Canary, ...]  # injected ones and their never-injected twins
    # DP audit records, included (one row each) or not; () when no DP audit runs.
    audit_records: tuple[AuditRecord, ...] = ()

    @property
    def pooled_texts(self) -> tuple[str, ...]:
        return tuple(t for texts in self.client_texts for t in texts)


def load_pairs(config: Config) -> list[QAPair]:
    if config.data.source == "jsonl":
        return load_qa_jsonl(config.data.path)
    return generate_qa(config.data.num_samples, seed=config.seed)


def split_heldout(pairs: list[QAPair], fraction: float, seed: int) -> tuple[list, list]:
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_held = max(1, round(len(pairs) * fraction))
    held = sorted(order[:n_held])
    train = sorted(order[n_held:])
    return [pairs[i] for i in train], [pairs[i] for i in held]


def partition(config: Config, pairs: list[QAPair]) -> list[list[int]]:
    n = config.federation.num_clients
    seed = _seed(config, _PARTITION_STREAM)
    match config.data.partition:
        case "iid":
            return partition_iid(len(pairs), n, seed)
        case "by-source":
            return partition_by_source([p.source for p in pairs], n)
        case "dirichlet":
            return partition_dirichlet(
                [p.topic for p in pairs], n, config.data.dirichlet_alpha, seed
            )
    raise AssertionError(config.data.partition)


@lru_cache(maxsize=4)
def build_federated_data(config: Config) -> FederatedData:
    pairs = load_pairs(config)
    train, heldout = split_heldout(
        pairs, config.data.heldout_fraction, _seed(config, _SPLIT_STREAM)
    )
    parts = partition(config, train)
    client_texts = [[format_qa(train[i]) for i in idx] for idx in parts]
    canaries = make_canaries(
        config.canaries.replica_counts,
        config.canaries.per_count,
        config.canary_clients(),
        config.canaries.placement,
        seed=_seed(config, _CANARY_STREAM),
    )
    injected = inject(client_texts, canaries, seed=_seed(config, _INJECT_STREAM))
    records = audit_records(config, seed=_seed(config, _AUDIT_RECORD_STREAM))
    injected = inject_audit_records(injected, records, seed=_seed(config, _AUDIT_INJECT_STREAM))
    return FederatedData(
        client_texts=tuple(tuple(t) for t in injected),
        heldout=tuple(heldout),
        canaries=tuple(canaries),
        audit_records=records,
    )
