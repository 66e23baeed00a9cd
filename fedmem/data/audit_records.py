"""Audit records for the record-level one-run DP audit (Steinke, Nasr and Jagielski 2023).

Each audit record is a short, high-entropy string (random letter-and-digit groups), distinct
from the memorization canaries. It goes into the training data with probability 1/2,
independently of every other record, as exactly one row of one client (no replicas: one row is
the unit DP-SGD protects). Which records went in (the inclusion bits) is written to the run
folder for the auditor; training never reads it. Everything is a pure function of the config.

With `dp_audit.record_design = "new_token"` the records are instead the new-token canaries
of Panda, Tang, Nasr, Choquette-Choo and Mittal ("Privacy Auditing of Large Language
Models", ICLR 2025): an in-distribution prefix (words of ICD-10-CM descriptions, the
vocabulary of the medical data) followed by a secret that is one token of its own, added to
the tokenizer for this record alone (`new_tokens`). No data holds that token, so the model
has never seen it and only an included record can raise its probability; the audit scores
the secret token alone.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from fedmem.config import Config

GROUPS, GROUP_CHARS = 8, 5  # "audit 1f3k9: x7q2m b0zrt ..." about 30 tokens on the tiny BPE
_ALPHABET = string.ascii_lowercase + string.digits
# New-token canaries: the words of the prefix, and the text of record i's own token (a
# special token: the tokenizer matches it whole, before BPE; no generated text contains "<|").
PREFIX_WORDS = 8
NEW_TOKEN_TEXT = "<|audit_{:04d}|>"


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


def new_tokens(config: Config) -> tuple[str, ...]:
    """The tokens the tokenizer gains for new-token audit records, one per record (record i
    ends with the i-th); none unless the run trains on new-token records."""
    if config.dp_audit.record_design != "new_token" or not records_injected(config):
        return ()
    return tuple(NEW_TOKEN_TEXT.format(i) for i in range(config.dp_audit.records))


@lru_cache(maxsize=1)
def prefix_vocabulary() -> tuple[str, ...]:
    """Distinct lower-case words of the ICD-10-CM descriptions, sorted: the in-distribution
    words new-token prefixes are drawn from."""
    from fedmem.data.resources.icd10 import load_icd10_codes

    words = {w.lower() for c in load_icd10_codes() for w in c.description.split()}
    return tuple(sorted(w for w in words if w.isalpha()))


def make_new_token_records(n: int, num_clients: int, seed: int) -> list[AuditRecord]:
    """`n` new-token records: PREFIX_WORDS random in-distribution words, then record i's
    own new token; each included with probability 1/2, independently."""
    rng = random.Random(seed)
    vocabulary = prefix_vocabulary()
    records: list[AuditRecord] = []
    for i in range(n):
        prefix = " ".join(rng.choices(vocabulary, k=PREFIX_WORDS))
        included = rng.random() < 0.5
        client = rng.randrange(num_clients)
        records.append(
            AuditRecord(f"a{i:04d}", f"{prefix} {NEW_TOKEN_TEXT.format(i)}", included, client)
        )
    return records


def make_audit_records(
    n: int, num_clients: int, seed: int, design: str = "random"
) -> list[AuditRecord]:
    """`n` distinct audit records of `design` (`dp_audit.record_design`); each included with
    probability 1/2, independently."""
    if design == "new_token":
        return make_new_token_records(n, num_clients, seed)
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
    cfg = config.dp_audit
    return tuple(
        make_audit_records(cfg.records, config.federation.num_clients, seed, cfg.record_design)
    )


def record_prompt_chars(records: Sequence[AuditRecord]) -> dict[str, int]:
    """Per new-token record text, the characters before its new token: its prompt under
    `training.answer_only_loss`, so that training, like the paper's fine-tuning, takes the
    loss on the secret (and the EOS) only. Random records have no prompt (none listed)."""
    marker = NEW_TOKEN_TEXT.split("{")[0]
    return {r.text: r.text.rindex(marker) for r in records if marker in r.text}


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
