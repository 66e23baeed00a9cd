"""`fedmem` command line: run a federated (or centralized) fine-tuning with audits, sweep a
grid of configs, and report, compare and store the results."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.table import Table

from fedmem.config import (
    Config,
    ConfigError,
    apply_overrides,
    build_config,
    config_differences,
    load_config,
    to_dict,
    to_run_config,
)
from fedmem.drivers.sweep import SweepEvents
from fedmem.files import DataError
from fedmem.runs.store import StoreError

USAGE_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmem", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="fine-tune and audit as a config describes")
    run.add_argument("config", nargs="?", help="TOML config file, e.g. configs/quickstart.toml")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set federation.rounds=5 (repeatable)",
    )
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run after its last complete round, with the config "
        "saved in RUN_DIR/config.json (a CONFIG or --set given too must equal it)",
    )
    run.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    audit = sub.add_parser(
        "audit",
        help="re-audit a finished run's saved rounds with other attack settings, or audit "
        "a model fedmem did not train (--model)",
    )
    audit.add_argument("run_dir", nargs="?", help="a run folder, e.g. runs/quickstart")
    audit.add_argument(
        "--model", help="audit this Hugging Face model folder or peft adapter folder instead"
    )
    audit.add_argument("--base", help="its base model folder (adapter base; MIA reference)")
    audit.add_argument(
        "--canaries", help='JSONL of {"text", "injected", "copies"[, "split"]} (with --model)'
    )
    audit.add_argument("--members", help='JSONL of {"text"}: known training texts')
    audit.add_argument("--nonmembers", help='JSONL of {"text"}: texts known not trained on')
    audit.add_argument("--out", help="output folder for --model (default audits/<model name>)")
    audit.add_argument(
        "--round",
        dest="rounds",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="audit only this saved round (repeatable; default: every saved round)",
    )
    audit.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an attack.* key, e.g. --set 'attack.decoding=[\"greedy\", \"beam\"]'",
    )
    audit.add_argument("--name", default=None, help="output folder under RUN_DIR/audits/")
    ready = sub.add_parser(
        "prepare",
        help="build and cache what a config loads (tokenizer, base model) and check its data, "
        "without training: for install steps and container images",
    )
    ready.add_argument("config")
    ready.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
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
    sweep.add_argument(
        "--parallel", type=int, default=1, metavar="N",
        help="run up to N cells at once, each in its own process (on the cells' Ray cluster "
        "as Ray tasks when they set federation.ray_address)",
    )
    sweep.add_argument("--cell", help=argparse.SUPPRESS)  # one cell, in this process
    sweep.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    report = sub.add_parser("report", help="write report.md, report.html and plots")
    report.add_argument("path", help="a run folder or a sweep folder (or any folder of runs)")
    compare = sub.add_parser("compare", help="two runs side by side")
    compare.add_argument("run_a")
    compare.add_argument("run_b")
    ingest = sub.add_parser("ingest", help="(re)build the results store from run folders")
    ingest.add_argument("path", help="a run folder or a folder of runs")
    ingest.add_argument("--db", help="store file (default: PATH/fedmem.sqlite)")
    deploy = sub.add_parser(
        "deploy-local",
        help="run on Flower's deployment engine: a SuperLink and N SuperNodes on loopback",
    )
    deploy.add_argument("config")
    deploy.add_argument(
        "--nodes", type=int, default=None, help="SuperNodes (= federation.num_clients)"
    )
    deploy.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    deploy.add_argument(
        "--workdir",
        default=None,
        help="folder for the processes' Flower homes and logs (default: a temporary folder)",
    )
    return parser


def prepare(config: Config) -> None:
    """Build the data and tokenizer and check the config against them: every error here
    comes before anything is written."""
    from fedmem.data.federated import (
        build_federated_data,
        check_data_sizes,
        check_every_client_trains,
        client_sizes,
    )
    from fedmem.models.loading import load_tokenizer

    check_data_sizes(config, load_tokenizer)
    if config.mode == "federated":
        check_every_client_trains(config, client_sizes(config, load_tokenizer))
        if config.secagg.enabled:
            from fedmem.mitigations.secure_aggregation import max_weight

            max_weight(config)
    elif not build_federated_data(config, load_tokenizer).pooled_texts:
        raise ConfigError("data: the centralized baseline gets no training samples")
    load_tokenizer(config)


def prepare_verbosely(config: Config) -> None:
    import time

    from fedmem.cache import cache_root
    from fedmem.runs.report import bars, console, steps_bar

    started = time.perf_counter()
    console.print(f"{config.name}: building {config.model.name}'s tokenizer and base model "
                  "(once; then cached) and checking the data")
    with bars() as bar, steps_bar(bar):
        prepare(config)
    console.print(
        f"{config.name}: {config.model.name} and its data ready in "
        f"{time.perf_counter() - started:.0f}s (models cached under {cache_root()})"
    )


def run(config: Config, verbose: bool = False, resume: bool = False) -> dict:
    from fedmem.data.federated import client_sizes, planted
    from fedmem.models.loading import load_tokenizer
    from fedmem.runs.folder import last_complete_round
    from fedmem.runs.report import console, print_summary, round_progress
    from fedmem.runs.run_log import notices

    rounds = config.federation.rounds
    with console.status("preparing data and the base model (built once, then cached)"):
        prepare(config)
    data = planted(config, load_tokenizer)
    injected = sum(1 for c in data.canaries if c.replicas)
    console.print(
        f"[bold]{config.name}[/]: {config.mode}, {config.model.name} ({config.model.finetuning}), "
        f"{config.federation.num_clients} clients x {rounds} rounds, "
        f"{sum(client_sizes(config, load_tokenizer))} training samples, "
        f"{injected} canaries injected (+{len(data.canaries) - injected} twins)"
        + _audit_records_note(data.audit_records_in_training)
    )
    for notice in notices(config):
        console.print(notice)
    if resume:
        done = last_complete_round(config.run_dir)
        where = "from the start" if done is None else f"after round {done}"
        console.print(f"resuming {config.run_dir} {where}")

    with round_progress(rounds) as on_round:
        train_and_audit(config, on_round, verbose, resume=resume)
    summary_path = config.run_dir / "summary.json"
    if not summary_path.exists():
        raise RuntimeError(f"the run ended without writing {summary_path}; see the errors "
                           f"above and {config.run_dir / 'run.log'}")
    summary = json.loads(summary_path.read_text())
    print_summary(summary, config.run_dir)
    return summary


def _audit_records_note(count: int) -> str:
    """The header's note on the DP audit records among the training samples, if any."""
    return f", {count} DP audit records among the training samples" if count else ""


def run_reaudit(args: argparse.Namespace) -> Path:
    from fedmem.runs.reaudit import reaudit, reaudit_config
    from fedmem.runs.report import console, print_summary, round_progress

    rounds = reaudit_config(args.run_dir, args.overrides).federation.rounds
    with round_progress(rounds) as on_round:
        folder = reaudit(args.run_dir, args.overrides, args.rounds, args.name, on_round)
    print_summary(json.loads((folder / "summary.json").read_text()), folder)
    console.print(f"re-audit written to {folder} (the run's own audit files are unchanged)")
    return folder


def run_external_audit(args: argparse.Namespace) -> Path:
    from fedmem.runs.external import ExternalModel, audit_external
    from fedmem.runs.report import console, print_summary

    if args.run_dir or args.rounds or args.name:
        raise ConfigError("fedmem audit --model: give no RUN_DIR, --round or --name with it")
    if not args.canaries:
        raise ConfigError("fedmem audit --model: --canaries FILE.jsonl is required")
    if bool(args.members) != bool(args.nonmembers):
        raise ConfigError("fedmem audit --model: give --members and --nonmembers together")
    model = ExternalModel(
        Path(args.model),
        Path(args.base) if args.base else None,
        Path(args.canaries),
        Path(args.members) if args.members else None,
        Path(args.nonmembers) if args.nonmembers else None,
    )
    with console.status(f"auditing {args.model}"):
        folder, notes = audit_external(model, args.out, args.overrides)
    print_summary(json.loads((folder / "summary.json").read_text()), folder)
    for note in notes:
        console.print(f"note: {note}")
    console.print(f"audit of {args.model} written to {folder}")
    return folder


def resume_config(run_dir: Path, config_path: str | None, overrides: list[str]) -> Config:
    """The config saved in `run_dir`, placed at `run_dir`; a config given as well (a file
    and/or overrides) must not differ from it, the folder's name and location aside."""
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.json there, not a fedmem run folder")
    if (run_dir / "summary.json").is_file():
        raise ConfigError(f"--resume {run_dir}: the run is complete (summary.json exists)")
    try:
        raw = json.loads(saved_path.read_text(encoding="utf-8"))
        saved = build_config(raw)
    except (ValueError, OSError) as err:  # ConfigError and JSON errors are ValueErrors
        raise ConfigError(f"{saved_path}: {str(err).splitlines()[0]}") from None
    saved = _placed_at(saved, run_dir)
    if config_path or overrides:
        given = (
            load_config(config_path, overrides)
            if config_path
            else build_config(apply_overrides(raw, overrides))
        )
        differs = config_differences(saved, given)
        if differs:
            key, was, now = differs[0]
            more = f" (and {len(differs) - 1} more keys)" if len(differs) > 1 else ""
            raise ConfigError(
                f"--resume {run_dir}: the given config differs from {saved_path} at {key} "
                f"({now!r}, saved {was!r}){more}; to resume, give no CONFIG or --set"
            )
    return saved


def _placed_at(config: Config, run_dir: Path) -> Config:
    """`config` with its run folder at `run_dir` (the folder may have moved, or the run may
    have been started from another working directory)."""
    if config.run_dir.resolve() == run_dir.resolve():
        return config
    where = run_dir.resolve()
    output = dataclasses.replace(config.output, dir=str(where.parent))
    return dataclasses.replace(config, name=where.name, output=output)


def train_and_audit(
    config: Config, on_round=None, verbose: bool = False, resume: bool = False
) -> None:
    """One run, federated or centralized, writing its folder (and its store rows);
    `resume` continues its folder after the last complete round. The libraries' warnings
    and log lines go to the run folder's run.log (`verbose`: to the terminal, as they come)."""
    from contextlib import nullcontext

    from fedmem.runs.run_log import to_run_log

    with nullcontext() if verbose else to_run_log(config.run_dir, resume):
        if config.mode == "centralized":
            from fedmem.drivers.centralized import run_centralized

            run_centralized(config, on_round=on_round, resume=resume)
        else:
            from fedmem.drivers.simulation import run_federated

            if not verbose:  # after the import: importing flwr resets its logger's level
                logging.getLogger("flwr").setLevel(logging.ERROR)
            run_federated(config, on_round=on_round, resume=resume, verbose=verbose)


def sweep(
    path: str,
    overrides: list[str],
    dry_run: bool = False,
    verbose: bool = False,
    parallel: int = 1,
    cell: str | None = None,
) -> None:
    from fedmem.drivers.sweep import (
        describe_cells,
        find_cell,
        load_sweep,
        run_one_cell,
        run_sweep,
        run_sweep_parallel,
    )
    from fedmem.runs.report import console

    spec = load_sweep(path, overrides)  # every cell validated before anything runs

    def run_cell(config, on_round, resume):
        train_and_audit(config, on_round, verbose, resume)

    if cell is not None:  # one cell of a parallel sweep, in its own process
        run_one_cell(find_cell(spec, cell), run_cell)
        return
    if dry_run:
        print_cells(spec.name, spec.folder, describe_cells(spec))
        return
    how = "one after another" if parallel == 1 else f"up to {parallel} at once"
    console.print(
        f"[bold]{spec.name}[/]: {len(spec.cells)} cells ({' x '.join(spec.axes)}), run "
        f"{how} in {spec.folder}"
    )
    with sweep_progress(spec) as events:
        if parallel == 1:
            ran = run_sweep(spec, run_cell, events)
        else:
            ran = run_sweep_parallel(spec, parallel, overrides, events)
    console.print(f"{len(ran)} cells run now, {len(spec.cells) - len(ran)} already finished")
    report(str(spec.folder))


def report(path: str) -> None:
    from fedmem.runs.report import console, print_report
    from fedmem.runs.report_files import write_report

    with console.status("ingesting runs and drawing figures"):
        written = write_report(path)
    print_report(written)


def compare(run_a: str, run_b: str) -> None:
    from fedmem.runs.report import comparison_table, console, paired_tests

    table = comparison_table(run_a, run_b)
    tests = paired_tests(run_a, run_b)  # refuses runs over different canaries, before printing
    console.print(table, width=max(console.width, 120))
    for line in tests:
        console.print(line)


def ingest(path: str, db: str | None) -> None:
    from fedmem.runs.report import console
    from fedmem.runs.store import ingest as ingest_folders

    store, run_ids = ingest_folders(path, db)
    console.print(f"{len(run_ids)} runs ingested into {store}")


def deploy(config: Config, workdir: str | None) -> int:
    import tempfile
    from pathlib import Path

    from fedmem.drivers.deployment import deploy_local
    from fedmem.runs.report import print_summary

    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="fedmem-deploy-") as tmp:
            code = deploy_local(config, Path(tmp))
    else:
        code = deploy_local(config, Path(workdir))
    summary_path = config.run_dir / "summary.json"
    if code == 0 and summary_path.exists():
        print_summary(json.loads(summary_path.read_text()), config.run_dir)
    return code


def flower_table(config: Config) -> str:
    lines = ["[tool.flwr.app.config]"]
    lines += [f'"{key}" = {json.dumps(value)}' for key, value in to_run_config(config).items()]
    return "\n".join(lines)


@contextmanager
def sweep_progress(sweep) -> Iterator[SweepEvents]:
    """Bars over a sweep's cells, the current cell's rounds and the round's step, each with
    the time left; yields SweepEvents that also print one line per finished or skipped cell
    (off a terminal, those lines alone)."""
    from fedmem.runs.report import bars, steps_bar

    total = len(sweep.cells)
    with bars() as progress, steps_bar(progress):
        cells = progress.add_task("cells", total=total)
        rounds = progress.add_task("rounds", total=1)

        def cell_started(index: int, cell) -> None:
            progress.update(rounds, total=cell.config.federation.rounds, completed=0,
                            description=f"rounds of {cell.name}")

        def round_done(row: dict) -> None:
            progress.update(rounds, completed=row["round"])

        def cell_done(index: int, cell, skipped: bool) -> None:
            progress.update(cells, advance=1)
            head = f"cell {index + 1}/{total} {cell.name}: "
            if skipped:
                progress.console.print(head + "finished before, skipped")
                return
            summary = json.loads((cell.run_dir / "summary.json").read_text())
            final = summary["final"]
            progress.console.print(
                head + f"exact {final['extraction']['injected']['exact_rate']:.1%}  "
                f"token acc {final['extraction']['injected']['token_accuracy']:.1%}  "
                f"held-out ppl {final['heldout_perplexity']:.2f}  ({summary['wall_time_s']:.0f}s)"
            )

        yield SweepEvents(cell_started, round_done, cell_done)


def print_cells(name: str, folder: Path, rows: list[dict]) -> None:
    from fedmem.runs.report import console

    table = Table(title=f"{name}: {len(rows)} cells in {folder} (dry run, nothing runs)")
    for col in ("#", "cell", "status"):
        table.add_column(col)
    for i, row in enumerate(rows, 1):
        table.add_row(str(i), row["cell"], row["status"])
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    resume = getattr(args, "resume", None)
    try:
        if args.command == "sweep":
            sweep(
                args.sweep, args.overrides, args.dry_run, args.verbose, args.parallel, args.cell
            )
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
        if args.command == "audit" and args.model:
            run_external_audit(args)
            return 0
        if args.command == "audit":
            if not args.run_dir:
                raise ConfigError("fedmem audit: give a RUN_DIR, or --model PATH")
            run_reaudit(args)
            return 0
        if resume:
            config = resume_config(Path(resume), args.config, args.overrides)
        elif args.config is None:
            raise ConfigError("fedmem run: give a CONFIG file, or --resume RUN_DIR")
        else:
            overrides = list(args.overrides)
            if getattr(args, "nodes", None) is not None:
                overrides.append(f"federation.num_clients={args.nodes}")
            config = load_config(args.config, overrides)
        if args.command == "deploy-local":
            return deploy(config, args.workdir)
        if args.command == "prepare":
            prepare_verbosely(config)
            return 0
        if args.command == "config":
            print(flower_table(config) if args.flower else json.dumps(to_dict(config), indent=2))
            return 0
        run(config, verbose=args.verbose, resume=bool(resume))
    except (ConfigError, DataError, StoreError) as err:
        print(f"fedmem: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except RuntimeError as err:  # a deployment that failed to start or to run
        from fedmem.drivers.deployment import DeploymentError

        if not isinstance(err, DeploymentError):
            raise
        print(f"fedmem: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
