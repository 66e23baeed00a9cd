"""Canaries: synthetic clinical records injected into client data to audit memorization.

Each record is split into a prefix the attacker is assumed to know (record number, patient
name and address) and a secret suffix (birth date, SSN, diagnosis, prescription, clinician,
visit date). Every injected canary has a never-injected twin drawn from the same generator,
the reference population for exposure and membership-inference scores.

With ``canaries.kind = "note"`` each canary is instead a whole synthetic admission note or
discharge summary (fedmem.data.clinical_notes) split inside the note, after a number of
tokens of the model's tokenizer: the prefixes of the study's prefix sweep end there.

Records can also be the user's own (e.g. i2b2-style clinical notes), one JSON object with a
``"text"`` per line: they are split after a fixed number of characters or tokens, shuffled,
and paired, so a random half is injected and the other half is held back as twins.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from faker import Faker

from fedmem.data.resources.diseases import Disease, load_diseases

PLACEMENTS = ("single", "spread", "proportional")
DEFAULT_REPLICA_COUNTS = (1, 2, 4, 8)
MIN_SECRET_FRACTION = 0.6  # share of each record's characters that lie in the secret suffix

_BIRTH_RANGE = (dt.date(1935, 1, 1), dt.date(2005, 12, 31))
_VISIT_RANGE = (dt.date(2019, 1, 1), dt.date(2025, 12, 31))
_GENERIC_STRENGTHS = ("5 mg", "10 mg", "20 mg", "25 mg", "50 mg", "100 mg", "250 mg", "500 mg")
_GENERIC_FREQUENCIES = (
    "once daily",
    "twice daily",
    "three times daily",
    "every 8 hours",
    "at bedtime",
    "as needed",
)

# (prefix, secret suffix) layouts. Each prefix ends with a newline, where the split goes.
_TEMPLATES = (
    (
        "Medical Note: MRN {mrn}\nPatient: {name}, {address}.\n",
        "DOB {dob}. SSN {ssn}. Diagnosis: {disease} ({icd}). Presenting with {symptoms}. "
        "Prescribed {drug} {strength} {frequency}. Attending: Dr. {doctor}, {specialty}. "
        "Visit {visit}.",
    ),
    (
        "Clinical Record {mrn}\nName: {name}\nAddress: {address}\n",
        "Date of birth: {dob}\nSSN: {ssn}\nAssessment: {disease}, ICD-10 {icd}; "
        "reports {symptoms}.\nPlan: start {drug} {strength} {frequency}.\n"
        "Seen by Dr. {doctor} ({specialty}) on {visit}.",
    ),
    (
        "Discharge Summary, MRN {mrn}\nPatient {name} of {address}\n",
        "born {dob}, SSN {ssn}, was treated for {disease} [{icd}] after presenting with "
        "{symptoms}. Discharged on {drug} {strength} {frequency}. "
        "Physician: Dr. {doctor}, {specialty}. Date: {visit}.",
    ),
    (
        "Outpatient Visit Note (MRN {mrn})\nPatient: {name}\nHome address: {address}\n",
        "Born {dob}; SSN {ssn}. Complaints: {symptoms}. Impression: {disease}, code {icd}. "
        "Medication: {drug} {strength}, {frequency}. Clinician: Dr. {doctor}, {specialty}. "
        "Seen {visit}.",
    ),
)


@dataclass(frozen=True)
class Canary:
    canary_id: str  # e.g. "c0007"
    text: str  # the whole record
    split: int  # text[:split] is the prefix known to the attacker, text[split:] the secret
    replicas: int  # copies injected into training data; 0 for a never-injected twin
    clients: tuple[int, ...]  # client index of each injected copy; () for twins
    twin_id: str  # the paired canary: injected <-> twin

    @property
    def prefix(self) -> str:
        return self.text[: self.split]

    @property
    def suffix(self) -> str:
        return self.text[self.split :]

    @property
    def injected(self) -> bool:
        return self.replicas > 0


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _prescription(rng: random.Random, disease: Disease) -> tuple[str, str, str]:
    """(drug, strength, frequency), from the drug's dose ladder where the table has one."""
    dosed = [d.medication for d in disease.dosing]
    drug = rng.choice(dosed or list(disease.medications))
    dosing = disease.dosing_for(drug)
    if dosing is None:
        return drug, rng.choice(_GENERIC_STRENGTHS), rng.choice(_GENERIC_FREQUENCIES)
    return drug, rng.choice(dosing.strengths()), rng.choice(dosing.frequencies)


def _record(rng: random.Random, fake: Faker, mrn: str, ssn: str) -> tuple[str, int]:
    disease = rng.choice(load_diseases())
    drug, strength, frequency = _prescription(rng, disease)
    symptoms = rng.sample(disease.symptoms, min(len(disease.symptoms), rng.randint(2, 3)))
    prefix, suffix = rng.choice(_TEMPLATES)
    fields = {
        "mrn": mrn,
        "name": f"{fake.first_name()} {fake.last_name()}",
        "address": f"{fake.street_address()}, {fake.city()}, {fake.state_abbr()} {fake.zipcode()}",
        "dob": fake.date_between(*_BIRTH_RANGE).isoformat(),
        "ssn": ssn,
        "disease": disease.name,
        "icd": disease.icd10,
        "symptoms": _join([s.lower() for s in symptoms]),
        "drug": drug,
        "strength": strength,
        "frequency": frequency,
        "doctor": f"{fake.first_name()} {fake.last_name()}",
        "specialty": disease.specialty,
        "visit": fake.date_between(*_VISIT_RANGE).isoformat(),
    }
    head = prefix.format(**fields)
    return head + suffix.format(**fields), len(head)


def generate_records(n: int, seed: int) -> list[tuple[str, int]]:
    """``n`` distinct synthetic clinical records as ``(text, split)``, deterministic in seed.

    Record numbers and SSNs are unique within one call. ``text[:split]`` (record number,
    name, address) ends with a newline; the secret ``text[split:]`` holds at least
    MIN_SECRET_FRACTION of the characters (the rare record with a longer prefix is redrawn).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    fake = Faker("en_US")
    fake.seed_instance(seed)
    mrns: set[str] = set()
    ssns: set[str] = set()
    records: list[tuple[str, int]] = []
    while len(records) < n:
        mrn = f"{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"
        ssn = fake.ssn()
        if mrn in mrns or ssn in ssns:
            continue
        text, split = _record(rng, fake, mrn, ssn)
        if len(text) - split < MIN_SECRET_FRACTION * len(text):
            continue
        mrns.add(mrn)
        ssns.add(ssn)
        records.append((text, split))
    return records


def generate_note_records(
    n: int, seed: int, tokenizer, min_tokens: int, max_tokens: int, split_tokens: int
) -> list[tuple[str, int]]:
    """``n`` whole synthetic clinical notes as ``(text, split)`` (fedmem.data.clinical_notes),
    deterministic in seed and `tokenizer`: ``min_tokens`` to ``max_tokens`` tokens each,
    ``text[:split]`` ends with a sentence or a line after ``split_tokens`` tokens or more,
    and ``text[split:]``, the secret, holds ``min_tokens - split_tokens`` tokens or more."""
    from fedmem.data.clinical_notes import generate_notes

    notes = generate_notes(n, seed, tokenizer, min_tokens, max_tokens, split_tokens)
    return [(note.text, split) for note, split in notes]


def load_records(path: str | Path) -> list[tuple[int, str]]:
    """The user's records as ``(line number, text)``: one JSON object per line with a
    non-empty string ``"text"`` (other keys are ignored); blank lines are skipped."""
    from fedmem.files import DataError, jsonl_objects

    records = []
    for lineno, obj in jsonl_objects(path, "canary records"):
        where = f"{path}:{lineno}"
        if "text" not in obj:
            raise DataError(f"{where}: missing field 'text'")
        text = obj["text"]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: field 'text' must be a non-empty string")
        records.append((lineno, text))
    return records


def split_records(
    records: Sequence[tuple[int, str]], length: int, unit: str, path: str, tokenizer=None
) -> list[tuple[str, int]]:
    """``(text, split)`` of each record: the prefix is its first `length` characters
    (`unit` "chars") or tokens of `tokenizer` ("tokens"); the secret must not be empty."""
    from fedmem.files import DataError

    out: list[tuple[str, int]] = []
    for lineno, text in records:
        if unit == "chars":
            split, size = length, len(text)
        else:
            offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
            ends = [end for start, end in offsets if end > start]  # specials have (0, 0)
            split, size = (ends[length - 1] if len(ends) >= length else len(text)), len(ends)
        if split >= len(text.rstrip()):
            raise DataError(
                f"{path}:{lineno}: record has {size} {unit}; canaries.prefix_length = "
                f"{length} leaves no secret"
            )
        out.append((text, split))
    return out


def _check_canary_args(
    replica_counts: Sequence[int],
    per_count: Sequence[int],
    target_clients: Sequence[int],
    placement: str,
) -> None:
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; expected one of {PLACEMENTS}")
    if not replica_counts:
        raise ValueError("replica_counts must not be empty")
    if bad := [r for r in replica_counts if r < 1]:
        raise ValueError(f"replica counts must be >= 1, got {bad[0]}")
    if len(per_count) != len(replica_counts):
        raise ValueError(
            f"{len(per_count)} per-count sizes for {len(replica_counts)} replica counts"
        )
    if bad := [n for n in per_count if n < 1]:
        raise ValueError(f"per_count must be >= 1, got {bad[0]}")
    if not target_clients:
        raise ValueError("target_clients must not be empty")
    if bad := [c for c in target_clients if c < 0]:
        raise ValueError(f"client indices must be >= 0, got {bad[0]}")


def make_canaries(
    replica_counts: Sequence[int],
    per_count: int | Sequence[int],
    target_clients: Sequence[int],
    placement: str,
    seed: int,
    *,
    records: Sequence[tuple[str, int]] | None = None,
    client_weights: Sequence[float] | None = None,
    id_prefix: str = "c",
) -> list[Canary]:
    """``per_count`` injected canaries per replica count (one number for every count, or
    one per count, e.g. ``[1, 10]`` with ``[280, 120]``), each followed by its twin.

    ``placement="single"`` puts all copies of a canary on one client, taking target clients
    round-robin; ``"spread"`` sends each copy to a target client drawn uniformly at random;
    ``"proportional"`` draws it with probability proportional to ``client_weights[client]``
    (each client's data size). Ids run ``c0000, c0001, ...``: even ids are injected, the
    next odd id is the twin. ``records`` (``(text, split)``, used in order, surplus unused)
    replace the generated ones.
    """
    if isinstance(per_count, int):
        per_count = [per_count] * len(replica_counts)
    _check_canary_args(replica_counts, per_count, target_clients, placement)
    needed = 2 * sum(per_count)
    if records is None:
        records = generate_records(needed, seed)
    elif len(records) < needed:
        raise ValueError(f"{needed} records needed (half of them twins), got {len(records)}")
    if placement == "proportional":
        if client_weights is None:
            raise ValueError("placement 'proportional' needs client_weights")
        weights = [client_weights[c] for c in target_clients]
        if sum(weights) <= 0:
            raise ValueError("placement 'proportional': the target clients hold no data")
    records = iter(records)
    rng = random.Random(seed)
    canaries: list[Canary] = []
    for replicas, size in zip(replica_counts, per_count, strict=True):
        for _ in range(size):
            if placement == "single":
                client = target_clients[(len(canaries) // 2) % len(target_clients)]
                clients = (client,) * replicas
            elif placement == "proportional":
                clients = tuple(rng.choices(target_clients, weights, k=replicas))
            else:
                clients = tuple(rng.choice(target_clients) for _ in range(replicas))
            own_id = f"{id_prefix}{len(canaries):04d}"
            twin_id = f"{id_prefix}{len(canaries) + 1:04d}"
            text, split = next(records)
            canaries.append(Canary(own_id, text, split, replicas, clients, twin_id))
            text, split = next(records)
            canaries.append(Canary(twin_id, text, split, 0, (), own_id))
    return canaries


# Exposure-canary layouts: a short record ending in a digit secret (the split goes before
# the digits' leading space, so a tokenizer that joins a space to the next word keeps it
# with the secret in training and in every candidate alike).
_EXPOSURE_TEMPLATES = (
    "Pharmacy refill PIN for {name}, MRN {mrn}: {secret}",
    "Patient portal access code of {name} (MRN {mrn}): {secret}",
    "Lab results line for {name}, record {mrn}, verification code {secret}",
)


def make_exposure_canaries(
    replica_counts: Sequence[int],
    per_count: int,
    digits: int,
    target_clients: Sequence[int],
    placement: str,
    seed: int,
    *,
    client_weights: Sequence[float] | None = None,
) -> list[Canary]:
    """Canaries for exposure: ``per_count`` per replica count, each followed by its twin.

    The secret ``text[split:]`` is a space and a uniformly drawn ``digits``-digit string
    (so the candidate space is every d-digit string); ids run ``e0000, e0001, ...`` with the
    same injected/twin pairing and placement as ``make_canaries``."""
    if per_count == 0:
        return []
    needed = 2 * len(replica_counts) * per_count
    return make_canaries(
        replica_counts,
        per_count,
        target_clients,
        placement,
        seed,
        records=exposure_records(needed, digits, seed),
        client_weights=client_weights,
        id_prefix="e",
    )


def exposure_records(n: int, digits: int, seed: int) -> list[tuple[str, int]]:
    """``n`` short records ``(text, split)`` with distinct record numbers, each ending in a
    space and a uniformly drawn ``digits``-digit secret."""
    rng = random.Random(seed)
    fake = Faker("en_US")
    fake.seed_instance(seed)
    mrns: set[str] = set()
    records: list[tuple[str, int]] = []
    while len(records) < n:
        mrn = f"{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"
        if mrn in mrns:
            continue
        mrns.add(mrn)
        head = rng.choice(_EXPOSURE_TEMPLATES).format(
            name=f"{fake.first_name()} {fake.last_name()}", mrn=mrn, secret="\0"
        )
        head = head.removesuffix(" \0")
        records.append((f"{head} {rng.randrange(10**digits):0{digits}d}", len(head)))
    return records


def inject(
    client_samples: Sequence[Sequence[str]], canaries: Sequence[Canary], seed: int
) -> list[list[str]]:
    """New per-client sample lists, each canary copy inserted at a uniformly random position.

    The other samples keep their order; the input is not modified.
    """
    rng = random.Random(seed)
    samples = [list(client) for client in client_samples]
    for canary in canaries:
        for client in canary.clients:
            if not 0 <= client < len(samples):
                raise ValueError(
                    f"canary {canary.canary_id} targets client {client}, "
                    f"but there are {len(samples)} clients"
                )
            samples[client].insert(rng.randint(0, len(samples[client])), canary.text)
    return samples


def inject_into(
    samples: Sequence[str],
    client: int,
    sizes: Sequence[int],
    canaries: Sequence[Canary],
    seed: int,
) -> tuple[list[str], list[int]]:
    """What ``inject`` gives one client, without the other clients' samples: its samples
    with its canary copies inserted, and every client's sample count afterwards.

    ``inject`` draws each copy's position from the target client's current length only,
    so replaying its draws over the counts (``sizes``: every client's samples before
    injection) places this client's copies exactly where the whole build does.
    """
    rng = random.Random(seed)
    sizes = list(sizes)
    out = list(samples)
    for canary in canaries:
        for target in canary.clients:
            if not 0 <= target < len(sizes):
                raise ValueError(
                    f"canary {canary.canary_id} targets client {target}, "
                    f"but there are {len(sizes)} clients"
                )
            position = rng.randint(0, sizes[target])
            if target == client:
                out.insert(position, canary.text)
            sizes[target] += 1
    return out, sizes


def to_jsonl_rows(canaries: Sequence[Canary]) -> list[dict]:
    """One JSON-ready dict per canary, with ``injected``, ``prefix`` and ``suffix`` spelt out."""
    return [
        {
            "canary_id": c.canary_id,
            "text": c.text,
            "split": c.split,
            "prefix": c.prefix,
            "suffix": c.suffix,
            "replicas": c.replicas,
            "clients": list(c.clients),
            "twin_id": c.twin_id,
            "injected": c.injected,
        }
        for c in canaries
    ]


def _labelled_fields(obj: dict, where: str) -> tuple[str, bool, int, int | None]:
    """(text, injected, copies, split or None) of one labelled record, checked."""
    from fedmem.files import DataError

    text, injected, copies = obj.get("text"), obj.get("injected"), obj.get("copies")
    split = obj.get("split")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: field 'text' must be a non-empty string")
    if not isinstance(injected, bool):
        raise DataError(f"{where}: field 'injected' must be true or false")
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 0:
        raise DataError(f"{where}: field 'copies' must be an integer >= 0")
    if injected != (copies > 0):
        raise DataError(
            f"{where}: 'injected' is {str(injected).lower()} but 'copies' is {copies} "
            "(injected records have copies >= 1, never-injected twins 0)"
        )
    if split is not None and (
        isinstance(split, bool) or not isinstance(split, int) or not 0 < split < len(text)
    ):
        raise DataError(f"{where}: field 'split' must be a character offset inside 'text'")
    return text, injected, copies, split


def load_labelled_canaries(
    path: str | Path, length: int, unit: str, tokenizer=None
) -> list[Canary]:
    """Canaries of a model trained elsewhere, one JSON object per line: ``text``,
    ``injected``, ``copies`` (0 for a never-injected twin) and optionally ``split`` (the
    secret's first character; else the first `length` `unit`s are the prefix, as for
    ``load_records``). The i-th injected record is paired with the i-th twin. The copies
    are counted on client 0 (the trainer's clients are not known)."""
    from fedmem.files import DataError, jsonl_objects

    rows = []
    for lineno, obj in jsonl_objects(path, "labelled canaries"):
        text, _, copies, split = _labelled_fields(obj, f"{path}:{lineno}")
        if split is None:
            [(text, split)] = split_records([(lineno, text)], length, unit, str(path), tokenizer)
        rows.append((f"c{len(rows):04d}", text, split, copies))
    if not any(copies for *_, copies in rows):
        raise DataError(f"{path}: no injected record (copies >= 1)")
    injected = [r[0] for r in rows if r[3]]
    twins = [r[0] for r in rows if not r[3]]
    pair = dict(zip(injected, twins, strict=False)) | dict(zip(twins, injected, strict=False))
    return [
        Canary(cid, text, split, copies, (0,) * copies, pair.get(cid, ""))
        for cid, text, split, copies in rows
    ]
