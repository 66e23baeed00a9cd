"""`fedmem report PATH`: report.md, a self-contained report.html and PNG figures for a run or
a sweep, every number read from the results store (fedmem.runs.store).

The folder is (re)ingested first, so the report always matches the run folders. A
*combination* is a sweep cell's axis values except the seed (a run outside a sweep is its own
combination); tables give mean +- sample std over its seeds at each run's final round.
The audits a run can leave out (membership inference: `attack.membership.enabled`; exposure:
`attack.exposure.enabled` and `canaries.exposure_per_count`; multiple choice: none held out)
fill their columns and figures when the runs carry them and are listed as absent otherwise.
MIA numbers are the headline score's (fedmem.runs.report `headline_score`) over all samples; ROC
curves and exposures are the global model's.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fedmem.runs import figures, store

PCT = 100.0


@dataclass
class Report:
    folder: Path
    markdown: Path
    html: Path
    figures: dict[str, Path] = field(default_factory=dict)
    table: list[list[str]] = field(default_factory=list)  # header row first
    absent: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------- data


def _scope(path: Path) -> tuple[Path, list[str]]:
    """(store, run_ids) for a run folder or a folder of runs, after (re)ingesting it."""
    path = Path(path)
    if not path.is_dir():
        raise store.StoreError(f"{path}: no such folder")
    if (path / "summary.json").exists():
        return store.store_for_run(path), [store.ingest_run(path)]
    db, run_ids = store.ingest(path)
    return db, run_ids


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = values.dropna()
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()) if len(values) else float("nan"), std


def _fmt(mean: float, std: float, n: int, scale: float = 1.0, digits: int = 1) -> str:
    if mean != mean:  # NaN
        return "n/a"
    text = f"{mean * scale:.{digits}f}"
    return f"{text} ± {std * scale:.{digits}f}" if n > 1 else text


@dataclass
class ReportData:
    runs: pd.DataFrame  # one row per run (store `runs`), in combination order
    rounds: pd.DataFrame  # rounds_wide: one row per (run, round)
    final: pd.DataFrame  # the final round of each run
    style: pd.DataFrame  # combination -> finetuning
    roc: pd.DataFrame  # store `mia_roc` (global vantage), with combination and seed
    exposure: pd.DataFrame  # store `exposure` (global vantage), with combination and seed

    def has(self, column: str) -> bool:
        """Whether any run carries the `runs` column (an audit it ran)."""
        return bool(self.runs[column].notna().any())

    @property
    def mia_score(self) -> str:
        """The headline MIA score(s) of the runs that audited membership, e.g. 'reference'."""
        return "/".join(dict.fromkeys(self.runs["mia_score"].dropna()))


def load_report_data(db: Path, run_ids: list[str]) -> ReportData:
    marks = ",".join("?" * len(run_ids))
    runs = store.query(db, f"SELECT * FROM runs WHERE run_id IN ({marks})", tuple(run_ids))
    runs = runs.sort_values("run_id").reset_index(drop=True)
    order = list(dict.fromkeys(runs["combination"]))
    runs["combination"] = pd.Categorical(runs["combination"], categories=order, ordered=True)
    runs = runs.sort_values(["combination", "seed"]).reset_index(drop=True)
    runs["combination"] = runs["combination"].astype(str)
    rounds = store.rounds_wide(db, run_ids)
    rounds["combination"] = pd.Categorical(rounds["combination"], categories=order, ordered=True)
    rounds = rounds.sort_values(["combination", "seed", "round"])
    rounds["combination"] = rounds["combination"].astype(str)
    last = rounds.groupby("run_id")["round"].transform("max")
    final = rounds[rounds["round"] == last].set_index("run_id")
    style = runs.groupby("combination", sort=False)["finetuning"].first().to_frame()
    roc = store.query(db, f"SELECT * FROM mia_roc WHERE run_id IN ({marks})", tuple(run_ids))
    exposure = store.query(db, f"SELECT * FROM exposure WHERE run_id IN ({marks})",
                           tuple(run_ids))
    seeds = runs.set_index("run_id")[["combination", "seed"]]
    for frame in (roc, exposure):
        if len(frame):
            frame[["combination", "seed"]] = seeds.loc[frame["run_id"]].to_numpy()
    return ReportData(runs, rounds, final, style, roc, exposure)


def _final_round_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of each run's last round in `frame` (rows without a round are kept)."""
    if frame.empty or frame["round"].isna().all():
        return frame
    last = frame.groupby("run_id")["round"].transform("max")
    return frame[(frame["round"] == last) | frame["round"].isna()]


# runs-table audit columns the report shows when some run carries them: (column, header,
# scale, digits); the MIA AUC header names the headline score.
AUDIT_COLUMNS = {
    "mia_auc": ("MIA AUC ({score})", 1.0, 3),
    "mia_tpr_at_1pct_fpr": ("MIA TPR @ 1% FPR (%)", PCT, 1),
    "exposure_mean": ("exposure (bits)", 1.0, 2),
    "qa_accuracy": ("QA accuracy (%)", PCT, 1),
    "mcq_accuracy": ("MCQ accuracy (%)", PCT, 1),
}


def combination_table(data: ReportData) -> pd.DataFrame:
    """Per combination: seeds, then `<metric>_mean` / `<metric>_std` columns (fractions)."""
    columns = ["combination", "seed", "exact_rate", "token_accuracy", "longest_match",
               "heldout_perplexity", "wall_time_s"]
    columns += [c for c in AUDIT_COLUMNS if data.has(c)]
    per_run = data.runs.set_index("run_id")[columns].astype({c: float for c in columns[2:]})
    rows = {}
    for combination, group in per_run.groupby("combination", sort=False):
        row: dict[str, float] = {"seeds": len(group)}
        for column in per_run.columns.drop(["combination", "seed"]):
            row[f"{column}_mean"], row[f"{column}_std"] = _mean_std(group[column])
        rows[combination] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def by_replicas(data: ReportData) -> pd.DataFrame:
    """combination, replicas, mean, std of final-round exact extraction (%) over seeds."""
    pattern = re.compile(r"^extraction\.by_replicas\.(\d+)\.exact_rate$")
    records = []
    for column in data.final.columns:
        if m := pattern.match(column):
            for combination, group in data.final.groupby("combination", sort=False):
                mean, std = _mean_std(group[column] * PCT)
                records.append({"combination": combination, "replicas": int(m.group(1)),
                                "mean": mean, "std": std})
    return pd.DataFrame.from_records(records, columns=["combination", "replicas", "mean", "std"])


# ------------------------------------------------------------------------------- writing


def _table_rows(data: ReportData, table: pd.DataFrame) -> list[list[str]]:
    header = ["combination", "seeds", "exact (%)", "partial: token acc (%)",
              "longest run (tokens)", "held-out ppl"]
    audits = [c for c in AUDIT_COLUMNS if f"{c}_mean" in table]
    header += [AUDIT_COLUMNS[c][0].format(score=data.mia_score) for c in audits]
    header.append("wall time (s)")
    rows = [header]
    for combination, t in table.iterrows():
        n = int(t["seeds"])
        row = [combination, str(n), _fmt(t.exact_rate_mean, t.exact_rate_std, n, PCT),
               _fmt(t.token_accuracy_mean, t.token_accuracy_std, n, PCT),
               _fmt(t.longest_match_mean, t.longest_match_std, n),
               _fmt(t.heldout_perplexity_mean, t.heldout_perplexity_std, n, digits=2)]
        row += [_fmt(t[f"{c}_mean"], t[f"{c}_std"], n, AUDIT_COLUMNS[c][1],
                     AUDIT_COLUMNS[c][2]) for c in audits]
        row.append(_fmt(t.wall_time_s_mean, t.wall_time_s_std, n, digits=0))
        rows.append(row)
    return rows


def _replica_rows(replicas: pd.DataFrame, order: list[str]) -> list[list[str]]:
    counts = sorted(replicas["replicas"].unique())
    rows = [["combination", *[("0 (twins)" if r == 0 else f"{r}x") for r in counts]]]
    for combination in order:
        sub = replicas[replicas.combination == combination].set_index("replicas")
        rows.append([combination, *[
            f"{sub.loc[r, 'mean']:.1f}" if r in sub.index else "n/a" for r in counts
        ]])
    return rows


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
    "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
)

CAPTIONS = {
    "extraction_vs_round": "Exact extraction of injected canaries by round (band: ±1 std "
    "over seeds).",
    "extraction_vs_replicas": "Final-round exact extraction by replica count, full (solid) vs "
    "LoRA (dashed).",
    "privacy_utility": "Privacy-utility frontier: lower-left is better; stars are "
    "Pareto-optimal combinations.",
    "mia_roc": "Membership-inference ROC curves of the global model at the final round, all "
    "samples (one panel per score; each combination's lowest seed).",
    "exposure": "Exposure of each exposure canary under the global model at the final round, "
    "by replica count (0 = never-injected twins).",
}


def write_report(path: str | Path) -> Report:
    """Ingest `path` (a run folder or a folder of runs), then write report.md, report.html and
    the figures' PNG files into it."""
    folder = Path(path)
    db, run_ids = _scope(folder)
    data = load_report_data(db, run_ids)
    table = combination_table(data)
    replicas = by_replicas(data)
    order = list(data.style.index)

    drawn = {
        "extraction_vs_round": figures.extraction_vs_round(
            data.rounds[["run_id", "combination", "round", "extraction.injected.exact_rate"]]
            .rename(columns={"extraction.injected.exact_rate": "exact_rate"}), data.style),
        "extraction_vs_replicas": figures.extraction_vs_replicas(replicas, data.style),
    }
    privacy = table.assign(exact_pct_mean=table.exact_rate_mean * PCT,
                           exact_pct_std=table.exact_rate_std * PCT)
    panels = [("exact_pct", "exact extraction, final round (%)")]
    if data.has("mia_auc"):
        panels.append(("mia_auc", f"membership inference AUC ({data.mia_score})"))
    drawn["privacy_utility"] = figures.privacy_utility(privacy, data.style, panels)
    absent = []
    if not data.has("mia_auc"):
        absent.append("MIA AUC (no run audited membership: attack.membership.enabled = false)")
    roc = data.roc[data.roc["population"] == "all"]
    if len(roc):
        final_roc = _final_round_rows(roc)
        lowest = final_roc.groupby("combination")["seed"].transform("min")
        drawn["mia_roc"] = figures.mia_roc(final_roc[final_roc.seed == lowest], data.style)
    else:
        absent.append("MIA ROC curves (no global curves in the runs' roc/round-NNN.json)")
    if len(data.exposure):
        drawn["exposure"] = figures.exposure_distribution(
            _final_round_rows(data.exposure), data.style)
    else:
        absent.append("exposure (no run audited exposure: attack.exposure.enabled = false "
                      "or canaries.exposure_per_count = 0)")
    if not data.has("qa_accuracy"):
        absent.append("QA accuracy (no `utility` in the runs' metrics.jsonl)")
    elif not data.has("mcq_accuracy"):
        absent.append("MCQ accuracy (no multiple-choice question held out)")

    pngs: dict[str, Path] = {}
    for name, fig in drawn.items():
        pngs[name] = folder / f"{name}.png"
        _save_png(fig, pngs[name])

    rows = _table_rows(data, table)
    replica_rows = _replica_rows(replicas, order)
    title = f"fedmem report: {folder.resolve().name}"
    facts = (
        f"{len(data.runs)} runs, {len(order)} combinations; final round of each run; "
        f"mean ± sample std over seeds. Store: `{db}`."
    )
    notes = [
        "*exact*: injected canaries whose secret continuation the global model reproduces "
        "token for token (greedy); *partial*: fraction of secret tokens reproduced at the right "
        "position; *longest run*: secret tokens reproduced before the first error; *held-out "
        "ppl*: perplexity on QA samples no client trained on (utility); *MIA*: membership "
        "inference by the headline score over all members vs non-members; *exposure*: mean "
        "exposure of injected exposure canaries; *QA / MCQ accuracy*: held-out answer match "
        "and multiple-choice accuracy.",
    ]
    md = [f"# {title}", "", facts, "", "## Memorization and utility by combination", "",
          _markdown_table(rows), "", *notes, "", "## Exact extraction by replica count (%)", "",
          _markdown_table(replica_rows), ""]
    for name, png in pngs.items():
        md += [f"![{CAPTIONS[name]}]({png.name})", "", CAPTIONS[name], ""]
    if absent:
        md += ["## Not in these runs", "", *[f"- {a}" for a in absent], ""]
    markdown = folder / "report.md"
    from fedmem.files import atomic_write_text

    atomic_write_text(markdown, "\n".join(md))

    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(facts)}</p>",
            "<h2>Memorization and utility by combination</h2>", _html_table(rows),
            f"<p>{html.escape(notes[0])}</p>", "<h2>Exact extraction by replica count (%)</h2>",
            _html_table(replica_rows)]
    for name, png in pngs.items():
        encoded = base64.b64encode(png.read_bytes()).decode()
        body.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
                    f'{encoded}"><figcaption>{html.escape(CAPTIONS[name])}</figcaption></figure>')
    if absent:
        body += ["<h2>Not in these runs</h2>", "<ul>",
                 *[f"<li>{html.escape(a)}</li>" for a in absent], "</ul>"]
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")
    report_html = folder / "report.html"
    atomic_write_text(report_html, page)
    return Report(folder, markdown, report_html, pngs, rows, absent)


def _save_png(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)
