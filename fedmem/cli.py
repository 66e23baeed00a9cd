"""`fedmem` command line: run a federated (or centralized) fine-tuning with audits, sweep a
grid of configs, and report, compare and store the results."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from fedmem.config import Config, ConfigError, load_config, to_dict, to_run_config
from fedmem.qa import DataError
from fedmem.store import StoreError

USAGE_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmem", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="fine-tune and audit as a config describes")
    run.add_argument("config", help="TOML config file, e.g. configs/quickstart.toml")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set federation.rounds=5 (repeatable)",
    )
    run.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    show = sub.add_parser("config", help="print the resolved config")
    show.add_argument("config")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.add_argument(
        "--flower",
        action="store_true",
        help="print it as Flower's flat run config ([tool.flwr.app.config] in pyproject.toml)",
    )
    sweep = sub.add_parser("sweep", help="run every cell of a sweep file, then report")
    sweep.add_argument("sweep", help="sweep TOML file, e.g. configs/sweeps/lora-vs-full.toml")
    sweep.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key in every cell (repeatable)",
    )
    sweep.add_argument("--dry-run", action="store_true", help="list the cells and their status")
    sweep.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    report = sub.add_parser("report", help="write report.md, report.html and plots")
    report.add_argument("path", help="a run folder or a sweep folder (or any folder of runs)")
    compare = sub.add_parser("compare", help="two runs side by side")
    compare.add_argument("run_a")
    compare.add_argument("run_b")
    ingest = sub.add_parser("ingest", help="(re)build the results store from run folders")
    ingest.add_argument("path", help="a run folder or a folder of runs")
    ingest.add_argument("--db", help="store file (default: PATH/fedmem.sqlite)")
    return parser


def run(config: Config, verbose: bool = False) -> dict:
    from fedmem.dataset import build_federated_data
    from fedmem.models import load_tokenizer
    from fedmem.report import console, print_summary, round_progress

    rounds = config.federation.rounds
    with console.status("preparing data and the base model (built once, then cached)"):
        data = build_federated_data(config)
        load_tokenizer(config)
    injected = sum(1 for c in data.canaries if c.replicas)
    console.print(
        f"[bold]{config.name}[/]: {config.mode}, {config.model.name} ({config.model.finetuning}), "
        f"{config.federation.num_clients} clients x {rounds} rounds, "
        f"{sum(len(t) for t in data.client_texts)} training samples, "
        f"{injected} canaries injected (+{len(data.canaries) - injected} twins)"
    )

    with round_progress(rounds) as on_round:
        train_and_audit(config, on_round, verbose)
    summary_path = config.run_dir / "summary.json"
    if not summary_path.exists():
        raise RuntimeError(f"the run ended without writing {summary_path}; see the log above")
    summary = json.loads(summary_path.read_text())
    print_summary(summary, config.run_dir)
    return summary


def train_and_audit(config: Config, on_round=None, verbose: bool = False) -> None:
    """One run, federated or centralized, writing its folder (and its store rows)."""
    if config.mode == "centralized":
        from fedmem.centralized import run_centralized

        run_centralized(config, on_round=on_round)
    else:
        from fedmem.federation import run_federated

        if not verbose:  # after the import: importing flwr resets its logger's level
            logging.getLogger("flwr").setLevel(logging.ERROR)
        run_federated(config, on_round=on_round)


def sweep(path: str, overrides: list[str], dry_run: bool = False, verbose: bool = False) -> None:
    from fedmem.report import console, print_cells, sweep_progress
    from fedmem.sweep import describe_cells, load_sweep, run_sweep

    spec = load_sweep(path, overrides)  # every cell validated before anything runs
    if dry_run:
        print_cells(spec.name, spec.folder, describe_cells(spec))
        return
    console.print(
        f"[bold]{spec.name}[/]: {len(spec.cells)} cells ({' x '.join(spec.axes)}), run one "
        f"after another in {spec.folder}"
    )
    with sweep_progress(spec) as events:
        ran = run_sweep(spec, lambda config, on_round: train_and_audit(config, on_round, verbose),
                        events)
    console.print(f"{len(ran)} cells run now, {len(spec.cells) - len(ran)} already finished")
    report(str(spec.folder))


def report(path: str) -> None:
    from fedmem.report import console, print_report
    from fedmem.report_files import write_report

    with console.status("ingesting runs and drawing figures"):
        written = write_report(path)
    print_report(written)


def compare(run_a: str, run_b: str) -> None:
    from fedmem.report import comparison_table, console

    console.print(comparison_table(run_a, run_b), width=max(console.width, 120))


def ingest(path: str, db: str | None) -> None:
    from fedmem.report import console
    from fedmem.store import ingest as ingest_folders

    store, run_ids = ingest_folders(path, db)
    console.print(f"{len(run_ids)} runs ingested into {store}")


def flower_table(config: Config) -> str:
    lines = ["[tool.flwr.app.config]"]
    lines += [f'"{key}" = {json.dumps(value)}' for key, value in to_run_config(config).items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "sweep":
            sweep(args.sweep, args.overrides, args.dry_run, args.verbose)
            return 0
        if args.command == "report":
            report(args.path)
            return 0
        if args.command == "compare":
            compare(args.run_a, args.run_b)
            return 0
        if args.command == "ingest":
            ingest(args.path, args.db)
            return 0
        config = load_config(args.config, args.overrides)
        if args.command == "config":
            print(flower_table(config) if args.flower else json.dumps(to_dict(config), indent=2))
            return 0
        run(config, verbose=args.verbose)
    except (ConfigError, DataError, StoreError) as err:
        print(f"fedmem: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
