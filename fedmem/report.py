"""What a person reads in the terminal: a line per round and the final summary table."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(highlight=False, soft_wrap=True)


def round_line(row: dict, rounds: int) -> str:
    ext = row["extraction"]["injected"]
    train = [c["train_loss"] for c in row["clients"].values() if "train_loss" in c]
    train_txt = f"train loss {sum(train) / len(train):.3f}  " if train else ""
    return (
        f"round {row['round']}/{rounds}  {train_txt}held-out ppl {row['heldout_perplexity']:.2f}  "
        f"exact {ext['exact_rate']:.1%}  token acc {ext['token_accuracy']:.1%}  "
        f"({row['elapsed_s']:.0f}s)"
    )


@contextmanager
def round_progress(rounds: int) -> Iterator[Callable[[dict], None]]:
    """A progress bar over rounds; yields the callback that reports each audited round."""
    columns = (TextColumn("rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("rounds", total=rounds)

        def on_round(row: dict) -> None:
            progress.console.print(round_line(row, rounds))
            progress.update(task, completed=row["round"])

        yield on_round


def summary_table(summary: dict) -> Table:
    before = summary["before"]["extraction"]["by_replicas"]
    final = summary["final"]["extraction"]["by_replicas"]
    table = Table(
        title=(
            f"{summary['name']}: {summary['mode']}, {summary['finetuning']} fine-tuning, "
            f"{summary['rounds']} rounds — canary extraction (greedy, prefix -> secret)"
        )
    )
    for col in ("replicas", "canaries", "exact (before)", "exact", "token acc", "longest run"):
        table.add_column(col, justify="right")
    for replicas in sorted(final, key=int):
        f = final[replicas]
        label = "0 (twins, never injected)" if replicas == "0" else f"{replicas}x"
        table.add_row(
            label,
            str(f["n"]),
            f"{before[replicas]['exact_rate']:.1%}",
            f"{f['exact_rate']:.1%}",
            f"{f['token_accuracy']:.1%}",
            f"{f['longest_match']:.1f}",
        )
    return table


def _eps(value: float) -> str:
    return "inf" if value == float("inf") else f"{value:.3f}"


def dp_audit_table(audit: dict) -> Table:
    """The accountant's epsilon beside the one-run empirical lower bounds, per audit."""
    table = Table(title="DP audit: claimed epsilon vs empirical lower bound (one run)")
    for col in ("audit", "claimed eps", "delta", "lower bound", "method", "evidence", "verdict"):
        table.add_column(col, justify="right")
    if record := audit.get("record"):
        claim = f"{_eps(record['epsilon_claimed'])} ({record['claimed_by']})"
        for method in ("one_run", "one_run_fdp"):
            if f"epsilon_{method}" not in record:
                continue
            table.add_row(
                f"record ({record['included']}/{record['records']} records in)",
                claim,
                f"{record['delta']:g}",
                _eps(record[f"epsilon_{method}"]),
                method,
                f"{record[f'correct_{method}']}/{record[f'guesses_{method}']} guesses right",
                record["verdict"],
            )
    if client := audit.get("client"):
        for threat in ("final_model", "all_iterates"):
            facts = client[threat]
            table.add_row(
                f"client ({client['canaries']} canary clients)",
                _eps(client["epsilon_claimed"]),
                f"{client['delta']:g}",
                _eps(facts["epsilon_lower_bound"]),
                f"gdp, {threat}",
                f"Gaussian-fit estimate {_eps(facts['epsilon_estimate'])}",
                client["verdict"],
            )
    return table


def print_summary(summary: dict, run_dir) -> None:
    final = summary["final"]
    console.print(summary_table(summary))
    if "dp_audit" in summary:
        console.print(dp_audit_table(summary["dp_audit"]))
    console.print(
        f"held-out loss {summary['before']['heldout_loss']:.3f} -> {final['heldout_loss']:.3f} "
        f"(perplexity {final['heldout_perplexity']:.2f}); "
        f"trainable {summary['trainable_parameters']:,} of {summary['parameters']:,} parameters; "
        f"{final['bytes_sent']:,} bytes sent by clients in the last round; "
        f"{summary['wall_time_s']:.0f}s"
    )
    console.print(f"run folder: {run_dir}")
