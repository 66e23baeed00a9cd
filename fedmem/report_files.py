"""`fedmem report PATH`: report.md, a self-contained report.html and PNG figures for a run or
a sweep, every number read from the results store (fedmem.store).

The folder is (re)ingested first, so the report always matches the run folders. A
*combination* is a sweep cell's axis values except the seed (a run outside a sweep is its own
combination); tables give mean +- sample std over its seeds at each run's final round.
Audit fields that only some versions write (MIA AUC and ROC points, exposure, QA accuracy) are
used when present and listed as absent otherwise.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fedmem import figures, store

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
    auc_keys: list[str]
    accuracy_keys: list[str]
    roc: pd.DataFrame
    exposure: pd.DataFrame


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
    columns = [c for c in rounds.columns if not c.startswith("clients.")]
    auc_keys = [c for c in columns if re.search(r"auc", c, re.I)]
    accuracy_keys = [
        c for c in columns
        if "accuracy" in c.lower() and "token_accuracy" not in c and not c.startswith("extraction")
    ]
    roc = store.query(db, f"SELECT * FROM mia_roc WHERE run_id IN ({marks})", tuple(run_ids))
    exposure = store.query(db, f"SELECT * FROM exposure WHERE run_id IN ({marks})",
                           tuple(run_ids))
    seeds = runs.set_index("run_id")[["combination", "seed"]]
    for frame in (roc, exposure):
        if len(frame):
            frame[["combination", "seed"]] = seeds.loc[frame["run_id"]].to_numpy()
    return ReportData(runs, rounds, final, style, auc_keys, accuracy_keys, roc, exposure)


def _final_round_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of each run's last round in `frame` (rows without a round are kept)."""
    if frame.empty or frame["round"].isna().all():
        return frame
    last = frame.groupby("run_id")["round"].transform("max")
    return frame[(frame["round"] == last) | frame["round"].isna()]


def combination_table(data: ReportData) -> pd.DataFrame:
    """Per combination: seeds, then `<metric>_mean` / `<metric>_std` columns (fractions)."""
    per_run = data.runs.set_index("run_id")[
        ["combination", "seed", "exact_rate", "token_accuracy", "longest_match",
         "heldout_perplexity", "wall_time_s"]
    ].copy()
    if data.auc_keys:
        per_run["mia_auc"] = data.final[data.auc_keys].max(axis=1)
    for key in data.accuracy_keys:
        per_run[key] = data.final[key]
    exposure = _final_round_rows(data.exposure)
    if len(exposure):
        injected = exposure[exposure["replicas"].fillna(1) > 0]
        per_run["exposure"] = injected.groupby("run_id")["exposure"].mean()
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
    if data.auc_keys:
        header.append("MIA AUC (best score)")
    if "exposure_mean" in table:
        header.append("exposure (bits)")
    header += [f"{key} (%)" for key in data.accuracy_keys]
    header.append("wall time (s)")
    rows = [header]
    for combination, t in table.iterrows():
        n = int(t["seeds"])
        row = [combination, str(n), _fmt(t.exact_rate_mean, t.exact_rate_std, n, PCT),
               _fmt(t.token_accuracy_mean, t.token_accuracy_std, n, PCT),
               _fmt(t.longest_match_mean, t.longest_match_std, n),
               _fmt(t.heldout_perplexity_mean, t.heldout_perplexity_std, n, digits=2)]
        if data.auc_keys:
            row.append(_fmt(t.mia_auc_mean, t.mia_auc_std, n, digits=3))
        if "exposure_mean" in table:
            row.append(_fmt(t.exposure_mean, t.exposure_std, n, digits=2))
        row += [_fmt(t[f"{k}_mean"], t[f"{k}_std"], n, PCT) for k in data.accuracy_keys]
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
    "mia_roc": "Membership-inference ROC curves at the final round.",
    "exposure": "Exposure of each canary at the final round, by replica count.",
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
    if data.auc_keys:
        panels.append(("mia_auc", "membership inference AUC (best score)"))
    drawn["privacy_utility"] = figures.privacy_utility(privacy, data.style, panels)
    absent = []
    if not data.auc_keys:
        absent.append("MIA AUC (no metrics.jsonl field whose name contains 'auc')")
    if len(data.roc):
        final_roc = _final_round_rows(data.roc)
        lowest = final_roc.groupby("combination")["seed"].transform("min")
        drawn["mia_roc"] = figures.mia_roc(final_roc[final_roc.seed == lowest], data.style)
    else:
        absent.append("MIA ROC curves (no fpr/tpr points in the run folders)")
    if len(data.exposure):
        drawn["exposure"] = figures.exposure_distribution(
            _final_round_rows(data.exposure), data.style)
    else:
        absent.append("exposure (no per-canary exposure rows in the run folders)")
    if not data.accuracy_keys:
        absent.append("QA accuracy (no metrics.jsonl accuracy field besides token accuracy)")

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
        "ppl*: perplexity on QA samples no client trained on (utility).",
    ]
    md = [f"# {title}", "", facts, "", "## Memorization and utility by combination", "",
          _markdown_table(rows), "", *notes, "", "## Exact extraction by replica count (%)", "",
          _markdown_table(replica_rows), ""]
    for name, png in pngs.items():
        md += [f"![{CAPTIONS[name]}]({png.name})", "", CAPTIONS[name], ""]
    if absent:
        md += ["## Not in these runs", "", *[f"- {a}" for a in absent], ""]
    markdown = folder / "report.md"
    from fedmem.results import atomic_write_text

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
