"""What a person reads in the terminal: a line per round, the final summary table, sweep
progress, the report's table and the side-by-side comparison of two runs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from fedmem import progress
from fedmem.audits import registry
from fedmem.audits.declaration import ReplicaColumn, header_text
from fedmem.audits.intervals import INTERVAL_NOTE
from fedmem.config import config_differences
from fedmem.runs.store import SUMMARY_FILE, StoreError, flatten, mitigations_label

# Sent to a file or a pipe, rich would cut tables to 80 columns ("repli…"): there is no
# terminal to fit, so tables print at their natural width (up to 240 columns).
console = Console(highlight=False, soft_wrap=True)
if not console.is_terminal:
    console = Console(highlight=False, soft_wrap=True, width=240)


def round_line(row: dict, rounds: int) -> str:
    """One line per audited round: training loss, each audit's part, time, failures."""
    train = [c["train_loss"] for c in row["clients"].values() if "train_loss" in c]
    parts = [f"round {row['round']}/{rounds}"]
    if train:
        parts.append(f"train loss {sum(train) / len(train):.3f}")
    parts += [line for audit in registry.audits() if (line := audit.line(row))]
    parts.append(f"({row['elapsed_s']:.0f}s)")
    failed = [str(f["client"]) if f["client"] is not None else "?" for f in row.get("failures", [])]
    if failed:
        parts.append(f"failed: client {', '.join(failed)}")
    if "abandoned" in row:
        parts.append(f"ROUND ABANDONED: {row['abandoned']}")
    return "  ".join(parts)


def bars() -> Progress:
    """Progress bars with the time elapsed and an estimate of the time left; drawn only on a
    terminal (sent to a file or a pipe, a bar would be a stream of redrawn lines)."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())
    return Progress(*columns, console=console, transient=True, disable=not console.is_terminal)


@contextmanager
def steps_bar(bar: Progress) -> Iterator[None]:
    """One more bar in `bar`: the step the work reports now (fedmem.progress), e.g. the
    clients done of a round's sampled clients, then each audit."""
    task = bar.add_task("", total=1, visible=False)
    current: list = ["", 0]  # the step's name and units done

    def on_step(name: str, done: int, total: int, detail: str) -> None:
        if name != current[0] or done < current[1]:  # a new step: its own clock and estimate
            bar.reset(task, total=max(total, 1), visible=True)
        current[:] = [name, done]
        text = f"  {name}: {detail}" if detail else f"  {name}"
        bar.update(task, completed=done, total=max(total, 1), description=text)

    with progress.listening(on_step):
        yield


@contextmanager
def round_progress(rounds: int) -> Iterator[Callable[[dict], None]]:
    """A bar over rounds and one over the round's current step; yields the callback that
    reports each audited round, which prints its line (the only output off a terminal)."""
    with bars() as bar, steps_bar(bar):
        task = bar.add_task("rounds", total=rounds)

        def on_round(row: dict) -> None:
            bar.console.print(round_line(row, rounds))
            bar.update(task, completed=row["round"])

        yield on_round


def summary_table(summary: dict) -> Table:
    """The final round by replica count: one row per replica count of the headline audit,
    the columns every audit declares (`Audit.by_replicas`); "-" where it has no value."""
    final, before = summary["final"], summary["before"]
    lead = registry.headline()
    table = Table(
        title=(
            f"{summary['name']}: {summary['mode']}, {summary['finetuning']} fine-tuning, "
            f"{summary['rounds']} rounds — {lead.headline.title(final)}"
        )
    )
    columns = [(a, c) for a in registry.audits() for c in a.by_replicas]
    table.add_column("replicas", justify="right")
    for audit, column in columns:
        table.add_column(header_text(column.header, audit.values(final)), justify="right")
    for replicas in lead.headline.groups(final):
        label = "0 (twins, never injected)" if replicas == "0" else f"{replicas}x"
        cells = [_cell_text(c, before if c.before else final, replicas) for _, c in columns]
        table.add_row(label, *cells)
    return table


def _cell_text(column: ReplicaColumn, row: dict, replicas: str) -> str:
    value = column.read(row, replicas)
    return "-" if value is None else column.fmt.format(value)


def _eps(value: float) -> str:
    return "inf" if value == float("inf") else f"{value:.3f}"


def _ceiling(facts: dict, key: str = "epsilon_ceiling") -> str:
    return "-" if facts.get(key) is None else _eps(facts[key])


def dp_audit_table(audit: dict) -> Table:
    """The accountant's epsilon beside the one-run empirical lower bounds and the audit's
    ceiling (the largest bound it could give), per audit; one verdict, the final round's."""
    table = Table(
        title="DP audit: claimed epsilon vs empirical lower bound (one run; verdict: final "
        "round only; inconclusive = claim at or above the ceiling, the audit could not refute it)"
    )
    columns = ("audit", "claimed eps", "delta", "lower bound", "ceiling (power)", "method",
               "evidence", "verdict")
    for col in columns:
        table.add_column(col, justify="right")
    if record := audit.get("record"):
        what = f"record ({record['included']}/{record['records']} records in)"
        _one_run_rows(table, record, what)
    if gradient := audit.get("gradient"):
        what = f"gradient ({gradient['included']}/{gradient['canaries']} canaries in)"
        for threat in ("final_model", "all_iterates"):
            facts = gradient.get(threat, {})
            if "unavailable" in facts:
                table.add_row(what, _claim(gradient), f"{gradient['delta']:g}", "-", "-",
                              f"one_run, {threat}", f"unavailable: {facts['unavailable']}",
                              gradient["verdict"] or "-")
            elif facts:
                _one_run_rows(table, {**gradient, **facts}, what, f", {threat}")
    if client := audit.get("client"):
        for threat in ("final_model", "all_iterates"):
            facts = client[threat]
            table.add_row(
                f"client ({client['canaries']} canary clients)",
                _eps(client["epsilon_claimed"]),
                f"{client['delta']:g}",
                _eps(facts["epsilon_lower_bound"]),
                _ceiling(client),
                f"gdp, {threat}",
                f"Gaussian-fit estimate {_eps(facts['epsilon_estimate'])} (not a bound)",
                client["verdict"] or "-",
            )
    return table


def _claim(facts: dict) -> str:
    return f"{_eps(facts['epsilon_claimed'])} ({facts['claimed_by']})"


def _one_run_rows(table: Table, facts: dict, audit: str, threat: str = "") -> None:
    """A record-level audit's rows (audit records or one statistic of the gradient
    canaries, `threat` naming it): one per method."""
    claim = _claim(facts)
    for method in ("one_run", "one_run_fdp"):
        if f"epsilon_{method}" not in facts:
            continue
        table.add_row(
            audit,
            claim,
            f"{facts['delta']:g}",
            _eps(facts[f"epsilon_{method}"]),
            _ceiling(facts, f"epsilon_ceiling_{method}"),
            method + threat,
            f"{facts[f'correct_{method}']}/{facts[f'guesses_{method}']} guesses right",
            facts["verdict"] or "-",
        )


def audit_records_line(summary: dict) -> str:
    """Says that the training rows include DP audit records, which a run compared with this
    one must train on too (dp_audit.inject)."""
    return (
        f"training rows include {summary['audit_records_in_training']} DP audit records "
        "(dp_audit.inject): compare with runs that train on them too"
    )


def print_summary(summary: dict, run_dir) -> None:
    final = summary["final"]
    console.print(summary_table(summary))
    if "dp_audit" in summary:
        console.print(dp_audit_table(summary["dp_audit"]))
    for audit in registry.audits():
        for detail in audit.details(summary) if audit.details else ():
            console.print(detail)
    view = final.get("client_view", {})
    if view.get("status") == "unavailable":
        console.print(f"client vantage point: unavailable ({view['reason']})")
    lead = registry.headline()
    for client, metrics in view.get("clients", {}).items():
        console.print(
            f"server's view of client {client}'s update: {lead.line(metrics)} "
            f"(global model: {lead.line(final)})"
        )
    if summary.get("audit_records_in_training"):
        console.print(audit_records_line(summary))
    console.print(
        f"trainable {summary['trainable_parameters']:,} of {summary['parameters']:,} parameters; "
        f"{final['bytes_sent']:,} bytes sent by clients in the last round; "
        f"{summary['wall_time_s']:.0f}s"
    )
    console.print(f"run folder: {run_dir}")


def print_report(report) -> None:
    table = Table(title=f"{report.folder}: final round, mean over seeds [{INTERVAL_NOTE}]")
    for i, col in enumerate(report.table[0]):
        table.add_column(col, justify="left" if i == 0 else "right", overflow="fold")
    for row in report.table[1:]:
        table.add_row(*row)
    # Wide enough for every cell unfolded (the audit columns make it wider than a terminal;
    # Console.print's `width` cannot exceed the console's, so a console of that width prints it).
    needed = sum(max(len(r[i]) for r in report.table) + 3 for i in range(len(report.table[0])))
    Console(highlight=False, soft_wrap=True, width=max(console.width, needed + 1)).print(table)
    for missing in report.absent:
        console.print(f"not in these runs: {missing}")
    console.print(f"report: {report.markdown} and {report.html} ({len(report.figures)} figures)")


# ----------------------------------------------------------------------------- compare

# Per-client numbers (training facts, any audit's `by_client`) and measurements are left out.
COMPARE_SKIP = ("clients.", "fit_stage.", "elapsed_s", "round")


def _compared(key: str) -> bool:
    return not key.startswith(COMPARE_SKIP) and ".by_client." not in key


def _run_facts(folder: Path) -> tuple[dict, dict]:
    folder = Path(folder)
    if not (folder / SUMMARY_FILE).exists():
        raise StoreError(f"{folder}: not a finished run folder (no {SUMMARY_FILE})")
    config = json.loads((folder / "config.json").read_text())
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    facts = {
        "mode": config["mode"],
        "model": config["model"]["name"],
        "finetuning": config["model"]["finetuning"],
        "mitigations": mitigations_label(config),
        "seed": config["seed"],
        "rounds": summary["rounds"],
        "trainable parameters": summary["trainable_parameters"],
        # None: a run recorded before the count was
        "audit records in training": summary.get("audit_records_in_training"),
        "wall time (s)": summary["wall_time_s"],
    }
    metrics = {k: v for k, v in flatten(summary["final"]).items() if _compared(k)}
    return {"facts": facts, "metrics": metrics}, config


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def comparison_table(run_a: str | Path, run_b: str | Path) -> Table:
    """Facts, final-round metrics and differing config keys of two runs, with B - A."""
    a, config_a = _run_facts(Path(run_a))
    b, config_b = _run_facts(Path(run_b))
    table = Table(title=f"A = {run_a}   B = {run_b}")
    for col, justify in (("", "left"), ("A", "right"), ("B", "right"), ("B - A", "right")):
        table.add_column(col, justify=justify)
    for key, value in a["facts"].items():
        table.add_row(key, _cell(value), _cell(b["facts"][key]), "")
    table.add_section()
    for key in sorted(set(a["metrics"]) | set(b["metrics"])):
        va, vb = a["metrics"].get(key), b["metrics"].get(key)
        delta = f"{vb - va:+.4g}" if va is not None and vb is not None else ""
        table.add_row(key, _cell(va), _cell(vb), delta)
    table.add_section()
    for key, was, now in config_differences(config_a, config_b):
        table.add_row(f"config {key}", _cell(was), _cell(now), "")
    return table


# ------------------------------------------------------------------ paired tests


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _headline_setting(folder: Path) -> tuple[str, int]:
    """The headline decoding and prefix length: the final row's (the first configured)."""
    extraction = json.loads((folder / SUMMARY_FILE).read_text())["final"].get("extraction", {})
    return extraction.get("decoding", "greedy"), extraction.get("prefix_tokens")


def canary_outcomes(folder: Path) -> dict[tuple[str, str], tuple[bool, float]]:
    """(canary id, its text) -> (exact, token accuracy) of the injected canaries: the
    global model's final round in extraction.jsonl, headline decoding and prefix length."""
    decoding, prefix = _headline_setting(folder)
    texts = {c["canary_id"]: c.get("text", "") for c in _read_jsonl(folder / "canaries.jsonl")}
    rows = [r for r in _read_jsonl(folder / "extraction.jsonl")
            if r.get("vantage", "global") == "global" and r.get("replicas", 0) > 0
            and r.get("decoding", decoding) == decoding
            and r.get("prefix_tokens", prefix) == prefix]
    if not rows:
        raise StoreError(f"{folder}: no global extraction rows to compare")
    final = max(r["round"] for r in rows)
    return {(r["canary_id"], texts.get(r["canary_id"], "")): (bool(r["exact"]),
                                                             float(r["token_accuracy"]))
            for r in rows if r["round"] == final}


def paired_tests(run_a: str | Path, run_b: str | Path) -> list[str]:
    """Whether B's final-round extraction differs from A's on the same canaries: McNemar
    exact on exact matches, Wilcoxon signed-rank on token accuracy; one line each."""
    from attacks.statistics import align, mcnemar_exact, paired_wilcoxon

    try:
        a, b = align(canary_outcomes(Path(run_a)), canary_outcomes(Path(run_b)))
    except ValueError as err:
        raise StoreError(f"cannot pair {run_a} and {run_b}: they audited different "
                         f"canaries ({err})") from None
    exact = mcnemar_exact([x[0] for x in a], [x[0] for x in b])
    accuracy = paired_wilcoxon([x[1] for x in a], [x[1] for x in b])
    return [
        f"exact extraction: {_verdict(exact)}: {exact.describe('A', 'B')}",
        f"token accuracy: {_verdict(accuracy)}: {accuracy.describe('A', 'B')}",
    ]


def _verdict(test) -> str:
    return "significant at 0.05" if test.significant() else "not significant at 0.05"
