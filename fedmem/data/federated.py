"""From config to data: QA samples split into held-out and per-client training sets, with
canaries injected into the training sets of their clients.

The held-out split is taken before anything is injected, so no canary copy can land in it
(the reference study split after duplication); with the published datasets it is taken
from each dataset separately (the study split each 90/10). With `partition = "by-source"`
client i holds `data.datasets[i]`, and `canaries.placement = "proportional"` sends copies to
clients in proportion to their data sizes, as the study did. Everything is a pure function
of the config, so the server and every client process rebuild identical data without
shipping it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fedmem.config import Config, ConfigError
from fedmem.data.audit_records import (
    AuditRecord,
    audit_records,
    inject_audit_records,
    inject_audit_records_into,
    record_prompt_chars,
)
from fedmem.data.canaries import (
    Canary,
    generate_note_records,
    inject,
    inject_into,
    load_labelled_canaries,
    load_records,
    make_canaries,
    make_exposure_canaries,
    split_records,
)
from fedmem.data.partition import partition_by_source, partition_dirichlet, partition_iid
from fedmem.data.qa import (
    QAPair,
    format_qa,
    format_question,
    generate_qa,
    load_qa_jsonl,
    prompt_parts,
)
from fedmem.files import DataError
from fedmem.seeding import HELDOUT_SAMPLE, data_seed, derive_seed

# Independent seed streams (fedmem.seeding.DATA_STREAMS), so changing e.g. the canaries
# leaves the QA split untouched.
_SPLIT_STREAM, _PARTITION_STREAM, _CANARY_STREAM, _INJECT_STREAM = (
    "split", "partition", "canaries", "inject"
)
_EXPOSURE_STREAM, _EXPOSURE_INJECT_STREAM = "exposure", "exposure-inject"
_AUDIT_RECORD_STREAM, _AUDIT_INJECT_STREAM = "audit-records", "audit-inject"


def _seed(config: Config, stream: str) -> int:
    return data_seed(config.seed, stream)


@dataclass(frozen=True)
class FederatedData:
    client_texts: tuple[tuple[str, ...], ...]  # training samples per client, canaries inside
    # Characters of each client text that are its prompt (masked under answer-only loss);
    # 0 for canaries, which are trained on whole.
    client_prompt_chars: tuple[tuple[int, ...], ...]
    heldout: tuple[QAPair, ...]  # never trained on, canary-free
    heldout_texts: tuple[str, ...]  # the held-out pairs rendered as training texts are
    canaries: tuple[Canary, ...]  # injected ones and their never-injected twins
    exposure_canaries: tuple[Canary, ...] = ()  # digit secrets, injected ones and twins
    # DP audit records, included (one row each) or not; () when the run trains on none
    # (dp_audit.inject).
    audit_records: tuple[AuditRecord, ...] = ()

    @property
    def pooled_texts(self) -> tuple[str, ...]:
        return tuple(t for texts in self.client_texts for t in texts)

    @property
    def qa_texts(self) -> tuple[str, ...]:
        """The pooled training rows that are QA samples: no canary, exposure canary or DP
        audit record."""
        injected = {c.text for c in (*self.canaries, *self.exposure_canaries)}
        injected |= {r.text for r in self.audit_records}
        return tuple(t for t in self.pooled_texts if t not in injected)

    @property
    def audit_records_in_training(self) -> int:
        """How many DP audit records the clients train on (one row each)."""
        return sum(r.included for r in self.audit_records)

    @property
    def pooled_prompt_chars(self) -> tuple[int, ...]:
        return tuple(c for chars in self.client_prompt_chars for c in chars)


def load_pairs(config: Config) -> list[QAPair]:
    if config.data.source == "jsonl":
        return load_qa_jsonl(config.data.path)
    if config.data.source == "datasets":
        from fedmem.data.medical import load_medical

        return [
            pair
            for name in config.data.datasets
            for pair in load_medical(name, getattr(config.data, name))
        ]
    return generate_qa(config.data.num_samples, seed=config.seed)


def split_heldout(pairs: list[QAPair], fraction: float, seed: int) -> tuple[list, list]:
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_held = max(1, round(len(pairs) * fraction))
    held = sorted(order[:n_held])
    train = sorted(order[n_held:])
    return [pairs[i] for i in train], [pairs[i] for i in held]


def split_heldout_by_source(pairs: list[QAPair], fraction: float, seed: int) -> tuple[list, list]:
    """`split_heldout` within each source (in order of appearance), concatenated."""
    train: list[QAPair] = []
    held: list[QAPair] = []
    for i, source in enumerate(dict.fromkeys(p.source for p in pairs)):
        t, h = split_heldout([p for p in pairs if p.source == source], fraction, seed + i)
        train += t
        held += h
    return train, held


def partition(config: Config, pairs: list[QAPair]) -> list[list[int]]:
    n = config.federation.num_clients
    seed = _seed(config, _PARTITION_STREAM)
    match config.data.partition:
        case "iid":
            return partition_iid(len(pairs), n, seed)
        case "by-source" if config.data.source == "datasets":
            return partition_by_source([p.source for p in pairs], n, config.data.datasets)
        case "by-source":
            return partition_by_source([p.source for p in pairs], n)
        case "dirichlet":
            return partition_dirichlet(
                [p.topic for p in pairs], n, config.data.dirichlet_alpha, seed
            )
    raise AssertionError(config.data.partition)


# The models layer's tokenizer loader (fedmem.models.loading.load_tokenizer): data takes it
# as an argument, as torchtune's dataset builders take their tokenizer.
TokenizerLoader = Callable[[Config], Any]

# A QA pair -> (training text, characters of it that are the prompt).
Renderer = Callable[[QAPair], tuple[str, int]]


def renderer(config: Config, load_tokenizer: TokenizerLoader) -> Renderer:
    """How QA pairs become training text: `format_qa`, or with `model.chat_template` the
    tokenizer's chat template (user: the question, assistant: the cue and the answer)."""
    if not config.model.chat_template:
        return lambda pair: (format_qa(pair), len(format_question(pair)))
    tokenizer = load_tokenizer(config)

    def render(pair: QAPair) -> tuple[str, int]:
        body, cue = prompt_parts(pair)
        user = [{"role": "user", "content": body}]
        prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        text = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": f"{cue} {pair.answer}"}], tokenize=False
        )
        if not text.startswith(prompt):
            raise ConfigError(
                f"model.chat_template = true: the template of {config.model.name!r} does not "
                "render the prompt as the start of the conversation"
            )
        return text, len(prompt)

    return render


def answer_cut(render: Renderer, pair: QAPair) -> tuple[str, int]:
    """The pair rendered as trained and cut after its answer (no end-of-turn tokens), and
    where the answer starts (at the space after the cue): a model given `text[:start]`
    should continue with `text[start:]`. Plain format: `(format_qa(pair),
    len(format_question(pair)))`."""
    text, _ = render(pair)
    _, cue = prompt_parts(pair)
    start = text.rindex(f"{cue} {pair.answer}") + len(cue)
    return text[: start + 1 + len(pair.answer)], start


def canary_records(config: Config, load_tokenizer: TokenizerLoader) -> list[tuple[str, int]] | None:
    """The canary records as `(text, split)`: generated notes (`canaries.kind = "note"`,
    measured with the model's tokenizer), or the user's records shuffled (seeded) so that
    make_canaries' pairing injects a random half and holds back the rest as twins; None:
    generate short records."""
    c = config.canaries
    if c.source == "generated" and c.kind == "note":
        try:
            return generate_note_records(
                2 * c.injected_total(),
                _seed(config, _CANARY_STREAM),
                load_tokenizer(config),
                c.note_min_tokens,
                c.note_max_tokens,
                c.note_split_tokens,
            )
        except ValueError as err:  # a range the model's tokenizer cannot give
            raise ConfigError(
                f"canaries.note_min_tokens = {c.note_min_tokens}, canaries.note_max_tokens = "
                f"{c.note_max_tokens}: {err}"
            ) from None
    if c.source == "generated":
        return None
    tokenizer = None
    if c.split_unit == "tokens":
        tokenizer = load_tokenizer(config)
    records = split_records(load_records(c.path), c.prefix_length, c.split_unit, c.path, tokenizer)
    needed = 2 * c.injected_total()
    if len(records) < needed:
        groups = (
            f"canaries.total ({c.total})"
            if c.total
            else f"canaries.per_count ({c.per_count}) x {len(c.replica_counts)} replica counts"
        )
        raise DataError(
            f"{c.path}: {len(records)} records, but {needed} are needed: {groups}, "
            "twice (half are held back as never-injected twins)"
        )
    random.Random(_seed(config, _CANARY_STREAM)).shuffle(records)
    return records


@dataclass(frozen=True)
class FederationIndex:
    """The federation without its texts: the training pairs, which of them each client
    holds, the held-out pairs, and the canaries, exposure canaries and DP audit records
    with the clients their copies go to. Cheap next to rendering every client's rows, so
    the server and each client build this and render only the rows they use."""

    train: tuple[QAPair, ...]
    parts: tuple[tuple[int, ...], ...]  # indices into `train`, per client
    heldout: tuple[QAPair, ...]
    canaries: tuple[Canary, ...]
    exposure_canaries: tuple[Canary, ...]
    audit_records: tuple[AuditRecord, ...]

    def client_sizes(self) -> tuple[int, ...]:
        """Training rows per client, injected copies included."""
        sizes = [len(part) for part in self.parts]
        for canary in (*self.canaries, *self.exposure_canaries):
            for client in canary.clients:
                sizes[client] += 1
        for record in self.audit_records:
            sizes[record.client] += record.included
        return tuple(sizes)


@lru_cache(maxsize=4)
def federation_index(config: Config, load_tokenizer: TokenizerLoader) -> FederationIndex:
    """The config's QA pairs split and partitioned, and its canaries placed (not for
    `data.source = "texts"`, which has no federation)."""
    pairs = load_pairs(config)
    split = split_heldout_by_source if config.data.source == "datasets" else split_heldout
    train, heldout = split(pairs, config.data.heldout_fraction, _seed(config, _SPLIT_STREAM))
    parts = partition(config, train)
    weights = [len(idx) for idx in parts]
    canaries = make_canaries(
        config.canaries.replica_counts,
        [size for _, size in config.canaries.group_sizes()],
        config.canary_clients(),
        config.canaries.placement,
        seed=_seed(config, _CANARY_STREAM),
        records=canary_records(config, load_tokenizer),
        client_weights=weights,
    )
    exposure = make_exposure_canaries(
        config.canaries.replica_counts,
        config.canaries.exposure_per_count,
        config.canaries.exposure_digits,
        config.canary_clients(),
        config.canaries.placement,
        seed=_seed(config, _EXPOSURE_STREAM),
        client_weights=weights,
    )
    return FederationIndex(
        train=tuple(train),
        parts=tuple(tuple(idx) for idx in parts),
        heldout=tuple(heldout),
        canaries=tuple(canaries),
        exposure_canaries=tuple(exposure),
        audit_records=audit_records(config, seed=_seed(config, _AUDIT_RECORD_STREAM)),
    )


@lru_cache(maxsize=4)
def build_federated_data(config: Config, load_tokenizer: TokenizerLoader) -> FederatedData:
    """Every client's training texts (QA rows with canaries, exposure canaries and DP audit
    records injected), the held-out set and the canaries. `load_tokenizer` (the models
    layer's) is called only when the config renders with a chat template, splits canary
    records by tokens or generates notes (measured in tokens). Renders the whole
    federation: a client needs only `client_data`, the audits `training_qa_texts` and
    `audited_heldout_texts`."""
    if config.data.source == "texts":
        return audited_texts(config, load_tokenizer)
    index = federation_index(config, load_tokenizer)
    render = renderer(config, load_tokenizer)
    rendered = [render(pair) for pair in index.train]
    prompt_chars = dict(rendered) | record_prompt_chars(index.audit_records)
    client_texts = [[rendered[i][0] for i in idx] for idx in index.parts]
    injected = inject(client_texts, index.canaries, seed=_seed(config, _INJECT_STREAM))
    injected = inject(
        injected, index.exposure_canaries, seed=_seed(config, _EXPOSURE_INJECT_STREAM)
    )
    injected = inject_audit_records(
        injected, index.audit_records, seed=_seed(config, _AUDIT_INJECT_STREAM)
    )
    return FederatedData(
        client_texts=tuple(tuple(t) for t in injected),
        client_prompt_chars=tuple(tuple(prompt_chars.get(t, 0) for t in ts) for ts in injected),
        heldout=index.heldout,
        heldout_texts=tuple(render(pair)[0] for pair in index.heldout),
        canaries=index.canaries,
        exposure_canaries=index.exposure_canaries,
        audit_records=index.audit_records,
    )


def client_data(
    config: Config, load_tokenizer: TokenizerLoader, client: int
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """One client's training texts and their prompt characters, exactly as
    `build_federated_data` gives them to that client, rendering only this client's pairs:
    the injection positions are replayed over every client's row count."""
    if config.data.source == "texts":
        data = build_federated_data(config, load_tokenizer)
        return data.client_texts[client], data.client_prompt_chars[client]
    index = federation_index(config, load_tokenizer)
    render = renderer(config, load_tokenizer)
    rendered = [render(index.train[i]) for i in index.parts[client]]
    prompt_chars = dict(rendered) | record_prompt_chars(index.audit_records)
    sizes = [len(idx) for idx in index.parts]
    texts = [text for text, _ in rendered]
    texts, sizes = inject_into(
        texts, client, sizes, index.canaries, _seed(config, _INJECT_STREAM)
    )
    texts, sizes = inject_into(
        texts, client, sizes, index.exposure_canaries, _seed(config, _EXPOSURE_INJECT_STREAM)
    )
    texts = inject_audit_records_into(
        texts, client, sizes, index.audit_records, _seed(config, _AUDIT_INJECT_STREAM)
    )
    return tuple(texts), tuple(prompt_chars.get(t, 0) for t in texts)


@dataclass(frozen=True)
class Planted:
    """What the run plants in the clients' data and the audits look for."""

    canaries: tuple[Canary, ...]
    exposure_canaries: tuple[Canary, ...]
    audit_records: tuple[AuditRecord, ...]

    @property
    def audit_records_in_training(self) -> int:
        return sum(r.included for r in self.audit_records)


def planted(config: Config, load_tokenizer: TokenizerLoader) -> Planted:
    """The canaries, exposure canaries and DP audit records, without rendering any row."""
    data: FederatedData | FederationIndex
    if config.data.source == "texts":
        data = build_federated_data(config, load_tokenizer)
    else:
        data = federation_index(config, load_tokenizer)
    return Planted(data.canaries, data.exposure_canaries, data.audit_records)


def client_sizes(config: Config, load_tokenizer: TokenizerLoader) -> tuple[int, ...]:
    """Training rows per client, without rendering any."""
    if config.data.source == "texts":
        return tuple(len(t) for t in build_federated_data(config, load_tokenizer).client_texts)
    return federation_index(config, load_tokenizer).client_sizes()


@lru_cache(maxsize=4)
def training_qa_texts(config: Config, load_tokenizer: TokenizerLoader) -> tuple[str, ...]:
    """The distinct QA texts the clients train on, sorted: `FederatedData.qa_texts` as a
    set, with no canary, exposure canary or DP audit record."""
    if config.data.source == "texts":
        return tuple(sorted(set(build_federated_data(config, load_tokenizer).qa_texts)))
    index = federation_index(config, load_tokenizer)
    render = renderer(config, load_tokenizer)
    injected = {c.text for c in (*index.canaries, *index.exposure_canaries)}
    injected |= {r.text for r in index.audit_records}
    return tuple(sorted({render(pair)[0] for pair in index.train} - injected))


def heldout_sample(config: Config, count: int) -> tuple[int, ...]:
    """Indices (ascending) of the held-out samples the per-round audits score: a seeded
    sample of `data.heldout_sample` of the `count`, the same every round; all with 0."""
    size = config.data.heldout_sample
    if not size:
        return tuple(range(count))
    if size > count:
        raise ConfigError(
            f"data.heldout_sample = {size}: there are only {count} held-out samples "
            f"(data.heldout_fraction = {config.data.heldout_fraction:g}); lower it, or 0 "
            "for all"
        )
    rng = random.Random(derive_seed(config.seed, HELDOUT_SAMPLE))
    return tuple(sorted(rng.sample(range(count), size)))


def held_out_count(config: Config, load_tokenizer: TokenizerLoader) -> int:
    if config.data.source == "texts":
        return len(build_federated_data(config, load_tokenizer).heldout_texts)
    return len(federation_index(config, load_tokenizer).heldout)


@lru_cache(maxsize=4)
def audited_heldout(config: Config, load_tokenizer: TokenizerLoader) -> tuple[QAPair, ...]:
    """The held-out pairs in the audits' sample (`heldout_sample`); () for texts."""
    if config.data.source == "texts":
        return ()
    heldout = federation_index(config, load_tokenizer).heldout
    return tuple(heldout[i] for i in heldout_sample(config, len(heldout)))


@lru_cache(maxsize=4)
def audited_heldout_texts(config: Config, load_tokenizer: TokenizerLoader) -> tuple[str, ...]:
    """The held-out samples in the audits' sample, rendered as training texts are."""
    if config.data.source == "texts":
        texts = build_federated_data(config, load_tokenizer).heldout_texts
        return tuple(texts[i] for i in heldout_sample(config, len(texts)))
    render = renderer(config, load_tokenizer)
    return tuple(render(pair)[0] for pair in audited_heldout(config, load_tokenizer))


def check_data_sizes(config: Config, load_tokenizer: TokenizerLoader) -> None:
    """One-line errors, before anything is written, for sizes the data cannot give: more
    clients than training rows, a held-out sample larger than the held-out set."""
    held_out = held_out_count(config, load_tokenizer)
    heldout_sample(config, held_out)
    if config.data.source == "texts" or config.mode != "federated":
        return
    index = federation_index(config, load_tokenizer)
    if index.train:  # a chat template that cannot render fails here, not in a client
        renderer(config, load_tokenizer)(index.train[0])
    n = config.federation.num_clients
    if n > len(index.train):
        raise ConfigError(
            f"federation.num_clients = {n}: more clients than the {len(index.train)} "
            f"training rows (data.num_samples = {config.data.num_samples} less "
            f"data.heldout_fraction = {config.data.heldout_fraction:g} held out)"
        )


def check_every_client_trains(config: Config, sizes: tuple[int, ...]) -> None:
    """Reject a config whose partition leaves a client without training samples (its
    every round would fail) before anything is written; `sizes`: rows per client
    (`client_sizes`)."""
    for client, size in enumerate(sizes):
        if not size:
            raise ConfigError(
                f"federation.num_clients = {config.federation.num_clients}: client {client} "
                f"gets no training samples (data.partition = {config.data.partition!r}, "
                f"{sum(sizes)} samples in all)"
            )


def _texts(path: str) -> list[str]:
    return [text for _, text in load_records(path)] if path else []


def audited_texts(config: Config, load_tokenizer: TokenizerLoader) -> FederatedData:
    """The data of a model trained elsewhere, as far as it is known (`data.source =
    "texts"`): its labelled canaries (their copies counted as client 0's training texts),
    its known members (`data.path`) as the rest of client 0's texts and its known
    non-members (`data.heldout_path`) as the held-out texts; no QA pairs."""
    c = config.canaries
    tokenizer = load_tokenizer(config) if c.split_unit == "tokens" else None
    canaries = load_labelled_canaries(c.path, c.prefix_length, c.split_unit, tokenizer)
    texts = _texts(config.data.path) + [x.text for x in canaries for _ in range(x.replicas)]
    return FederatedData(
        client_texts=(tuple(texts),),
        client_prompt_chars=((0,) * len(texts),),
        heldout=(),
        heldout_texts=tuple(_texts(config.data.heldout_path)),
        canaries=tuple(canaries),
    )
