"""Extraction: prompt with each canary's prefix, decode, compare with its secret.

The headline audit of fedmem: its exact and partial rates lead every table, its replica
counts are the rows of the terminal's final table. Every decoding x prefix length is run; the
first decoding at `attack.prefix_tokens` is the headline (top-level rates, by replica count
and by owning client). With a prefix sweep, each decoding also reports the mean over lengths
and the worst case (per canary, the best the attacker gets from any length).

Beside exact extraction, every group carries approximate memorization as in the study: the
share of canaries whose guess has sentence BLEU against the secret strictly above
`attack.bleu_threshold` (0.75), at the character level (`approx_char_rate`, the study's
measure) and the token level (`approx_token_rate`), each with its 95 % Clopper-Pearson
interval, and the mean BLEU (`char_bleu`, `token_bleu`). The worst case over prefix lengths
takes each canary's best BLEU over the lengths: approximately memorized if any length is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedmem.audits.declaration import (
    GLOBAL,
    Audit,
    AuditPart,
    Column,
    Figure,
    Headline,
    ReplicaColumn,
    ReportColumn,
    ReportView,
    Section,
    StoreTable,
    dig,
    interval_columns,
)
from fedmem.audits.intervals import formatted, mean_ci, rate_ci
from fedmem.audits.populations import canaries_by_id, canary_targets
from fedmem.seeding import EXTRACTION_BOOTSTRAP, derive_seed

if TYPE_CHECKING:
    import torch

    from attacks.extraction import (
        Decoding,
        ExtractionResult,
        ExtractionSummary,
        ExtractionTarget,
    )
    from fedmem.config import Config

PCT = 100.0


def extraction_targets(
    config: Config, prefix_tokens: int | None = None
) -> tuple[ExtractionTarget, ...]:
    return canary_targets(config, prefix_tokens or config.attack.prefix_tokens)


def decoding_for(config: Config, name: str) -> Decoding:
    from attacks.extraction import Decoding

    a = config.attack
    return Decoding(
        name, a.num_beams, a.num_samples, a.top_k, a.top_p, a.temperature, config.seed,
        suppress_eos=a.suppress_eos,
    )


def audit_extraction(config: Config, model: torch.nn.Module) -> AuditPart:
    from attacks.extraction import extract
    from fedmem.models.loading import load_tokenizer

    tokenizer = load_tokenizer(config)
    canaries = canaries_by_id(config)
    lengths = config.attack.prefix_lengths()
    threshold = config.attack.bleu_threshold
    seed = derive_seed(config.seed, EXTRACTION_BOOTSTRAP)

    def decode(ids: Sequence[int]) -> str:
        return tokenizer.decode(list(ids))

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
                    decode,
                )
            results = done[targets]
            per_length.append(results)
            rows += [_item(name, length, r, canaries, tokenizer) for r in results]
        if not headline:
            headline = per_length[0]
        variants[name] = prefix_metrics(
            dict(zip(lengths, per_length, strict=True)), canaries, threshold, seed
        )
    metrics = {
        **extraction_metrics(headline, canaries, bleu_threshold=threshold, seed=seed),
        "decoding": config.attack.decoding[0],
        "prefix_tokens": lengths[0],
        "bleu_threshold": threshold,
        "variants": variants,
    }
    return AuditPart({"extraction": metrics}, rows)


def prefix_metrics(
    per_length: Mapping[int, Sequence[ExtractionResult]],
    canaries: dict,
    bleu_threshold: float | None = None,
    seed: int = 0,
) -> dict:
    """One decoding's metrics at each prefix length (`prefix`), and with several lengths
    `over_prefixes`: the `mean` over lengths of every number (no intervals: a mean of
    intervals is no interval of the mean) and the `worst` case, the metrics of each
    canary's best over the lengths (exact if any length is, each partial score and BLEU
    its maximum), with intervals. The worst case's rates are never below the mean's."""
    from attacks.extraction import worst_case

    by_length = {
        str(n): extraction_metrics(rs, canaries, by_client=False,
                                   bleu_threshold=bleu_threshold, seed=seed)
        for n, rs in per_length.items()
    }
    out: dict = {"prefix": by_length}
    if len(per_length) > 1:
        worst = worst_case(list(per_length.values()))
        out["over_prefixes"] = {
            "mean": _mean_tree(list(by_length.values())),
            "worst": extraction_metrics(worst, canaries, by_client=False,
                                        bleu_threshold=bleu_threshold, seed=seed),
        }
    return out


def _item(decoding: str, length: int, r: ExtractionResult, canaries: dict, tokenizer) -> dict:
    return {
        "decoding": decoding,
        "prefix_tokens": length,
        "canary_id": r.canary_id,
        "replicas": canaries[r.canary_id].replicas,
        "exact": r.exact,
        "token_accuracy": r.token_accuracy,
        "edit_similarity": r.edit_similarity,
        "longest_match": r.longest_match,
        "char_bleu": r.char_bleu,
        "token_bleu": r.token_bleu,
        "generated": tokenizer.decode(list(r.generated_ids)),
    }


def extraction_metrics(
    results: Sequence[ExtractionResult],
    canaries: dict,
    by_client: bool = True,
    bleu_threshold: float | None = None,
    seed: int = 0,
) -> dict:
    """Rates over injected canaries, by replica count (0 = never-injected twins), by client;
    approximate memorization counts BLEU strictly above `bleu_threshold` (None: the study's
    0.75). `seed` seeds the bootstrap intervals of the mean token accuracy."""
    from attacks.approximate import APPROXIMATE_THRESHOLD
    from attacks.extraction import group_by, summarize

    if bleu_threshold is None:
        bleu_threshold = APPROXIMATE_THRESHOLD

    def summary(group: Sequence[ExtractionResult]) -> dict:
        return _with_ci(summarize(group, bleu_threshold), group, seed)

    def by(key: Callable[[str], Any], group: Sequence[ExtractionResult]) -> dict:
        return {str(k): summary(v) for k, v in group_by(group, key).items()}

    injected = [r for r in results if canaries[r.canary_id].replicas > 0]

    def owner(cid: str) -> str:
        clients = canaries[cid].clients
        return str(max(set(clients), key=clients.count)) if clients else "none"

    out = {
        "injected": summary(injected),
        "by_replicas": by(lambda cid: canaries[cid].replicas, results),
    }
    if by_client:
        out["by_client"] = by(owner, injected)
    return out


RATES = ("exact_rate", "approx_char_rate", "approx_token_rate")


def _with_ci(
    summary: ExtractionSummary, group: Sequence[ExtractionResult], seed: int
) -> dict:
    """The summary's numbers, plus `<rate>_ci` for each of its rates (exact, approximate by
    characters and by tokens): the 95 % Clopper-Pearson interval (successes = canaries
    counted, n = canaries in the group); and `token_accuracy_ci`, a percentile bootstrap
    interval of the mean over the group's canaries (a canary's tokens are not independent
    trials, so the canary is the unit resampled; None below two canaries)."""
    numbers = summary.as_dict()
    intervals = {
        f"{rate}_ci": rate_ci(round(numbers[rate] * summary.n), summary.n)
        for rate in RATES
        if rate in numbers
    }
    intervals["token_accuracy_ci"] = mean_ci([r.token_accuracy for r in group], seed)
    return {**numbers, **intervals}


def _mean_tree(trees: list[dict]) -> dict:
    """Element-wise mean of equally shaped nested dicts of numbers. Intervals (lists) are
    left out: a mean of intervals is no interval of the mean."""
    first = trees[0]
    return {
        k: _mean_tree([t[k] for t in trees])
        if isinstance(first[k], dict)
        else sum(t[k] for t in trees) / len(trees)
        for k in first
        if not k.endswith("_ci") and not isinstance(first[k], list)
    }


# ------------------------------------------------------------------------ the store


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


CANARY_RESULTS_DDL = """
CREATE TABLE IF NOT EXISTS canary_results (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, canary_id TEXT NOT NULL,
    replicas INTEGER, injected INTEGER, exact INTEGER, token_accuracy REAL,
    longest_match REAL, generated TEXT, extra_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS canary_results_run ON canary_results (run_id, round);
"""
_KNOWN = ("round", "canary_id", "replicas", "exact", "token_accuracy", "longest_match",
          "generated")


def canary_results(run_dir: Path) -> list[tuple]:
    """Every extraction.jsonl line (every vantage), with the canary's `injected` flag."""
    injected = {c["canary_id"]: bool(c["injected"])
                for c in _read_jsonl(run_dir / "canaries.jsonl")}
    return [
        (r["round"], r["canary_id"], r.get("replicas"), injected.get(r["canary_id"]),
         r.get("exact"), r.get("token_accuracy"), r.get("longest_match"), r.get("generated"),
         json.dumps({k: v for k, v in r.items() if k not in _KNOWN}, sort_keys=True))
        for r in _read_jsonl(run_dir / "extraction.jsonl")
    ]


# ---------------------------------------------------------------------- the terminal


def _title(row: Mapping) -> str:
    extraction = row.get("extraction") or {}
    return (
        f"canary extraction ({extraction.get('decoding', 'greedy')}, "
        f"{extraction.get('prefix_tokens', '')} prefix tokens -> secret)"
    )


def _groups(row: Mapping) -> list[str]:
    return sorted(dig(row, "extraction", "by_replicas") or {}, key=int)


def _by_replicas(key: str):
    return lambda row, replicas: dig(row, "extraction", "by_replicas", replicas, key)


def _rate_with_ci(row: Mapping, replicas: str) -> str | None:
    """'62.5 % [24.5, 91.5]': the group's exact rate with its Clopper-Pearson interval."""
    return formatted(dig(row, "extraction", "by_replicas", replicas), "exact_rate", "%")


def _approx_with_ci(row: Mapping, replicas: str) -> str | None:
    """The group's approximate-memorization rate (character BLEU above the threshold) with
    its Clopper-Pearson interval."""
    return formatted(dig(row, "extraction", "by_replicas", replicas), "approx_char_rate", "%")


def _token_accuracy_with_ci(row: Mapping, replicas: str) -> str | None:
    """The group's mean secret token accuracy with its bootstrap interval over canaries."""
    return formatted(dig(row, "extraction", "by_replicas", replicas), "token_accuracy", "%")


def _approx_header(unit: str):
    """'approx (BLEU>0.75)' and `unit`, from the runs' `bleu_threshold` column (numbers in
    the terminal, text joined by '/' in the report)."""

    def header(values: Mapping[str, Any]) -> str:
        threshold = values.get("bleu_threshold")
        shown = f"{threshold:g}" if isinstance(threshold, int | float) else str(threshold or "t")
        return f"approx (BLEU>{shown}){unit}"

    return header


# ------------------------------------------------------------------------ the report


def by_replicas(view: ReportView, rate: str = "exact_rate") -> Any:
    """combination, replicas, mean, std, low, high of a final-round rate (%; exact
    extraction unless `rate` names another, e.g. approx_char_rate): the mean over seeds with
    its 95 % t-interval; for one seed, or seeds that agree exactly, Clopper-Pearson over the
    group's canaries of all its seeds."""
    import pandas as pd

    pattern = re.compile(rf"^extraction\.by_replicas\.(\d+)\.{rate}$")
    records = []
    for column in view.final.columns:
        if m := pattern.match(column):
            n_column = column.removesuffix(rate) + "n"
            for combination, group in view.final.groupby("combination", sort=False):
                records.append({"combination": combination, "replicas": int(m.group(1)),
                                **_cell_stats(group[column], group.get(n_column))})
    return pd.DataFrame.from_records(
        records, columns=["combination", "replicas", "mean", "std", "low", "high"])


def _cell_stats(rates: Any, counts: Any) -> dict[str, float]:
    """One cell's mean, std and 95 % interval over its seeds' rates, in %."""
    from attacks.statistics import aggregate_seeds

    values = rates.dropna()
    if not len(values):
        return {"mean": float("nan"), "std": 0.0, "low": float("nan"), "high": float("nan")}
    ci = aggregate_seeds(values.to_numpy(dtype=float), bounds=(0.0, 1.0))
    if (len(values) == 1 or ci.low == ci.high) and counts is not None \
            and counts.notna().all():
        # One seed, or seeds that agree exactly (a zero-width t-interval says nothing):
        # Clopper-Pearson over the canaries of all its seeds together.
        n = counts.loc[values.index].astype(int)
        low, high = rate_ci(int(round((values * n).sum())), int(n.sum()))
    else:
        low, high = ci.low, ci.high
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {"mean": ci.estimate * PCT, "std": std * PCT, "low": low * PCT, "high": high * PCT}


def replica_rows(view: ReportView, rate: str = "exact_rate") -> list[list[str]]:
    """Per combination and replica count: mean [95 % interval] of exact extraction (%), or
    of another by-replicas rate."""
    replicas = by_replicas(view, rate)
    counts = sorted(replicas["replicas"].unique())
    rows = [["combination", *[("0 (twins)" if r == 0 else f"{r}x") for r in counts]]]
    if not counts:
        return rows  # runs from before the rate existed: header only, left out
    for combination in view.style.index:
        sub = replicas[replicas.combination == combination].set_index("replicas")
        rows.append([combination, *[_interval_text(sub.loc[r]) if r in sub.index else "n/a"
                                    for r in counts]])
    return rows


def approx_replica_rows(view: ReportView) -> list[list[str]]:
    """Per combination and replica count: approximate memorization (character BLEU above
    the threshold), mean [95 % interval] (%); header only for runs from before it."""
    return replica_rows(view, "approx_char_rate")


def _interval_text(cell: Any) -> str:
    from attacks.statistics import Interval

    return Interval(cell["mean"], cell["low"], cell["high"], 0.95, "").format()


def finetuning_tests(view: ReportView) -> list[list[str]]:
    """Full vs LoRA fine-tuning, cell by cell (same other axes and seed): McNemar exact on
    per-canary exact matches and Wilcoxon on token accuracy, final round, global model,
    headline decoding and prefix length. Pairs pool (seed, canary) over the seeds. Header
    only when the runs hold no full/LoRA pair."""
    from attacks.statistics import align, mcnemar_exact, paired_wilcoxon

    rows = [["full", "LoRA", "pairs", "exact extraction", "token accuracy"]]
    outcomes = _final_outcomes(view)
    for full, lora in _finetuning_pairs(view.runs):
        a = {(seed, cid): v for run, seed, _ in full for cid, v in outcomes.get(run, {}).items()}
        b = {(seed, cid): v for run, seed, _ in lora for cid, v in outcomes.get(run, {}).items()}
        if not a or a.keys() != b.keys():
            continue  # nothing audited, or different canaries: no pairing
        x, y = align(a, b)
        exact = mcnemar_exact([v[0] for v in x], [v[0] for v in y])
        accuracy = paired_wilcoxon([v[1] for v in x], [v[1] for v in y])
        names = (str(full[0][2]), str(lora[0][2]))
        rows.append([*names, str(len(x)), exact.describe("full", "LoRA"),
                     accuracy.describe("full", "LoRA")])
    return rows


def _finetuning_pairs(runs: Any) -> list[tuple[list, list]]:
    """[(full runs, LoRA runs)] of combinations alike but for model.finetuning, each run as
    (run_id, seed, combination), matched seed by seed."""
    groups: dict[str, dict[str, dict[int, tuple]]] = {}
    for run in runs.itertuples():
        axes = {k: v for k, v in json.loads(run.axes_json).items()
                if k not in ("seed", "model.finetuning")}
        key = json.dumps(axes, sort_keys=True) + run.mitigations
        groups.setdefault(key, {}).setdefault(run.finetuning, {})[int(run.seed)] = (
            run.run_id, int(run.seed), run.combination)
    pairs = []
    for by_kind in groups.values():
        full, lora = by_kind.get("full", {}), by_kind.get("lora", {})
        seeds = sorted(full.keys() & lora.keys())
        if seeds:
            pairs.append(([full[s] for s in seeds], [lora[s] for s in seeds]))
    return pairs


def _final_outcomes(view: ReportView) -> dict[str, dict[str, tuple[bool, float]]]:
    """run_id -> canary id -> (exact, token accuracy): injected canaries, the global
    model's final round, the run's headline decoding and prefix length."""
    results = view.table("canary_results")
    if results is None or results.empty:
        return {}
    headline = {r.run_id: _headline_setting(json.loads(r.config_json))
                for r in view.runs.itertuples()}
    out: dict[str, dict] = {}
    for run_id, group in results[results["injected"] == 1].groupby("run_id"):
        extra = [json.loads(e) for e in group["extra_json"]]
        keep = [e.get("vantage", GLOBAL) == GLOBAL
                and (e.get("decoding"), e.get("prefix_tokens")) == headline.get(run_id)
                for e in extra]
        mine = group[keep]
        if mine.empty:
            continue
        last = mine[mine["round"] == mine["round"].max()]
        out[run_id] = {r.canary_id: (bool(r.exact), float(r.token_accuracy))
                       for r in last.itertuples()}
    return out


def _headline_setting(config: Mapping) -> tuple[str, int]:
    attack = config.get("attack", {})
    return (attack.get("decoding") or ["greedy"])[0], attack.get("prefix_tokens")


def _percent_axis(ax) -> None:
    """0-100 % scale, with room for error bars and at least 0-10 % visible."""
    ax.set_ylim(-3, min(max(ax.get_ylim()[1], 10.0), 103))


def exact_by_round(view: ReportView) -> Any:
    return view.rounds[["run_id", "combination", "round", "extraction.injected.exact_rate"]] \
        .rename(columns={"extraction.injected.exact_rate": "exact_rate"})


def draw_vs_round(rounds: Any, view: ReportView) -> Any:
    """Exact extraction of injected canaries per round, mean over seeds (band: the 95 %
    t-interval over seeds; none with one seed).

    `rounds`: run_id, combination, round, exact_rate."""
    import matplotlib.pyplot as plt
    import pandas as pd

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for combination, group in rounds.groupby("combination", sort=False):
        stats = pd.DataFrame.from_dict(
            {r: _cell_stats(g["exact_rate"], None) for r, g in group.groupby("round")},
            orient="index")
        ax.plot(stats.index, stats["mean"], view.linestyle(combination), marker="o", ms=3,
                color=view.colour(combination), label=combination)
        ax.fill_between(stats.index, stats["low"], stats["high"],
                        color=view.colour(combination), alpha=0.15, lw=0)
    ax.set_xlabel("round (0 = before fine-tuning)")
    ax.set_ylabel("exact extraction, injected canaries (%)")
    _percent_axis(ax)
    ax.set_title("Extraction rate by round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def draw_vs_replicas(replicas: Any, view: ReportView) -> Any:
    """Final-round exact extraction by replica count (0 = never-injected twins).

    `replicas`: combination, replicas, mean, low, high (in %); error bars: the interval."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    counts = sorted(replicas["replicas"].unique())
    position = {r: i for i, r in enumerate(counts)}
    for combination, group in replicas.groupby("combination", sort=False):
        group = group.sort_values("replicas")
        x = [position[r] for r in group["replicas"]]
        spread = [(group["mean"] - group["low"]).fillna(0.0).clip(lower=0),
                  (group["high"] - group["mean"]).fillna(0.0).clip(lower=0)]
        ax.errorbar(x, group["mean"], yerr=spread, capsize=3, marker="o",
                    ms=4, ls=view.linestyle(combination), color=view.colour(combination),
                    label=combination)
    ax.set_xticks(range(len(counts)), [("0 (twins)" if r == 0 else f"{r}x") for r in counts])
    ax.set_xlabel("copies of each canary in the training data")
    ax.set_ylabel("exact extraction, final round (%)")
    _percent_axis(ax)
    ax.set_title("Extraction rate by replica count (solid: full, dashed: LoRA)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _injected(key: str):
    return lambda row: dig(row, "extraction", "injected", key)


def _injected_entry(row: Mapping) -> Any:
    return dig(row, "extraction", "injected")


AUDIT = Audit(
    name="extraction",
    order=10,
    enabled=lambda config: True,
    run=audit_extraction,
    output="extraction.jsonl",
    columns=(
        Column("exact_rate_before", _injected("exact_rate"), first_round=True,
               doc="injected canaries, round 0"),
        Column("exact_rate", _injected("exact_rate"), doc="injected canaries, final round",
               report=ReportColumn(
                   "exact (%)", PCT, 1, bounds=(0.0, 1.0),
                   note="*exact*: injected canaries whose secret continuation the global "
                   "model reproduces token for token (greedy)"),
               frontier="exact extraction, final round (%)"),
        *interval_columns("exact_rate", _injected_entry, "exact_rate", "Clopper-Pearson interval"),
        Column("token_accuracy", _injected("token_accuracy"),
               report=ReportColumn(
                   "partial: token acc (%)", PCT, 1, bounds=(0.0, 1.0),
                   note="*partial*: fraction of secret tokens reproduced at the right "
                   "position")),
        *interval_columns("token_accuracy", _injected_entry, "token_accuracy",
                          "bootstrap interval (over canaries)"),
        Column("longest_match", _injected("longest_match"),
               report=ReportColumn(
                   "longest run (tokens)", 1.0, 1,
                   note="*longest run*: secret tokens reproduced before the first error")),
        Column("bleu_threshold", lambda row: dig(row, "extraction", "bleu_threshold"),
               doc="attack.bleu_threshold: the BLEU an approx_* guess must exceed"),
        Column("approx_char_rate", _injected("approx_char_rate"),
               doc="injected canaries with character BLEU > bleu_threshold, final round",
               report=ReportColumn(
                   _approx_header(" (%)"), PCT, 1, bounds=(0.0, 1.0),
                   note="*approx*: injected canaries whose guess has character-level "
                   "sentence BLEU (sacrebleu) against the secret above the threshold, the "
                   "study's approximate memorization")),
        *interval_columns("approx_char_rate", _injected_entry, "approx_char_rate",
                          "Clopper-Pearson interval"),
        Column("approx_token_rate", _injected("approx_token_rate"),
               doc="injected canaries with token-level BLEU > bleu_threshold, final round"),
        *interval_columns("approx_token_rate", _injected_entry, "approx_token_rate",
                          "Clopper-Pearson interval"),
    ),
    round_line="exact {exact_rate:.1%} [{exact_rate_low:.1%}, {exact_rate_high:.1%}]  "
               "token acc {token_accuracy:.1%}",
    by_replicas=(
        ReplicaColumn("canaries", _by_replicas("n")),
        ReplicaColumn("exact (before), % [95% CI]", _rate_with_ci, before=True),
        ReplicaColumn("exact, % [95% CI]", _rate_with_ci),
        ReplicaColumn(_approx_header(", % [95% CI]"), _approx_with_ci),
        ReplicaColumn("token acc, % [95% CI]", _token_accuracy_with_ci),
        ReplicaColumn("edit sim", _by_replicas("edit_similarity"), "{:.1%}"),
        ReplicaColumn("longest run", _by_replicas("longest_match"), "{:.1f}"),
    ),
    headline=Headline(title=_title, groups=_groups),
    tables=(StoreTable("canary_results", CANARY_RESULTS_DDL,
                       ("round", "canary_id", "replicas", "injected", "exact", "token_accuracy",
                        "longest_match", "generated", "extra_json"), canary_results),),
    figures=(
        Figure("extraction_vs_round",
               "Exact extraction of injected canaries by round (band: 95 % t-interval over "
               "seeds).",
               exact_by_round, draw_vs_round),
        Figure("extraction_vs_replicas",
               "Final-round exact extraction by replica count, full (solid) vs LoRA (dashed); "
               "error bars: 95 % t-interval over seeds (one seed: Clopper-Pearson over the "
               "group's canaries).",
               by_replicas, draw_vs_replicas),
    ),
    sections=(Section("Exact extraction by replica count (%, mean [95 % interval])",
                      replica_rows),
              Section("Approximate memorization (character BLEU above attack.bleu_threshold) "
                      "by replica count (%, mean [95 % interval])", approx_replica_rows),
              Section("Full vs LoRA fine-tuning: paired tests over the same canaries",
                      finetuning_tests)),
)
