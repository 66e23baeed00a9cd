"""Audit records for the record-level one-run DP audit (Steinke, Nasr and Jagielski 2023).

Each audit record is a short, high-entropy string (random letter-and-digit groups), distinct
from the memorization canaries. It goes into the training data with probability 1/2,
independently of every other record, as exactly one row of one client (no replicas: one row is
the unit DP-SGD protects). Which records went in (the inclusion bits) is written to the run
folder for the auditor; training never reads it. Everything is a pure function of the config.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from dataclasses import dataclass

from fedmem.config import Config

GROUPS, GROUP_CHARS = 8, 5  # "audit 1f3k9: x7q2m b0zrt ..." about 30 tokens on the tiny BPE
_ALPHABET = string.ascii_lowercase + string.digits


@dataclass(frozen=True)
class AuditRecord:
    record_id: str  # e.g. "a0042"
    text: str
    included: bool  # the inclusion bit: trained on (one row of `client`) or never seen
    client: int  # the client whose data holds it (drawn for excluded records too)


def audit_enabled(config: Config) -> bool:
    """Record-level audits run in every DP run (DP-SGD or client-level DP) that trains on
    its audit records."""
    return records_injected(config) and (config.dp_sgd.enabled or config.client_dp.enabled)


def records_injected(config: Config) -> bool:
    """Whether the run trains on audit records (`dp_audit.inject`): "auto" in DP runs only,
    "always" in every run, "never" in none; never with `dp_audit.records = 0`."""
    dp_on = config.dp_sgd.enabled or config.client_dp.enabled
    match config.dp_audit.inject:
        case "always":
            return config.dp_audit.records > 0
        case "never":
            return False
    return config.dp_audit.records > 0 and dp_on


def make_audit_records(n: int, num_clients: int, seed: int) -> list[AuditRecord]:
    """`n` distinct audit records; each included with probability 1/2, independently."""
    rng = random.Random(seed)
    seen: set[str] = set()
    records: list[AuditRecord] = []
    while len(records) < n:
        groups = ["".join(rng.choices(_ALPHABET, k=GROUP_CHARS)) for _ in range(GROUPS)]
        text = f"audit {groups[0]}: {' '.join(groups[1:])}"
        if text in seen:
            continue
        seen.add(text)
        included = rng.random() < 0.5
        client = rng.randrange(num_clients)
        records.append(AuditRecord(f"a{len(records):04d}", text, included, client))
    return records


def audit_records(config: Config, seed: int) -> tuple[AuditRecord, ...]:
    """The run's audit records (none when the run does not train on them)."""
    if not records_injected(config):
        return ()
    return tuple(make_audit_records(config.dp_audit.records, config.federation.num_clients, seed))


def inject_audit_records(
    client_samples: Sequence[Sequence[str]], records: Sequence[AuditRecord], seed: int
) -> list[list[str]]:
    """New per-client sample lists with each included record inserted once, at a uniformly
    random position; the input is not modified."""
    rng = random.Random(seed)
    samples = [list(client) for client in client_samples]
    for record in records:
        if record.included:
            target = samples[record.client]
            target.insert(rng.randint(0, len(target)), record.text)
    return samples


def inject_audit_records_into(
    samples: Sequence[str], client: int, sizes: Sequence[int], records: Sequence[AuditRecord],
    seed: int,
) -> list[str]:
    """What ``inject_audit_records`` gives one client, from its own samples and every
    client's sample count (the positions depend on the target's length only)."""
    rng = random.Random(seed)
    sizes = list(sizes)
    out = list(samples)
    for record in records:
        if record.included:
            position = rng.randint(0, sizes[record.client])
            if record.client == client:
                out.insert(position, record.text)
            sizes[record.client] += 1
    return out


def to_jsonl_rows(records: Sequence[AuditRecord]) -> list[dict]:
    return [
        {"record_id": r.record_id, "text": r.text, "included": r.included, "client": r.client}
        for r in records
    ]
