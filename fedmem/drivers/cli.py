"""`fedmem` command line: run a federated (or centralized) fine-tuning with audits, sweep a
grid of configs, and report, compare and store the results."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.table import Table

from fedmem.config import Config, ConfigError, to_dict, to_run_config
from fedmem.drivers import api
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


def prepare_verbosely(config: Config) -> None:
    import time

    from fedmem.cache import cache_root
    from fedmem.runs.report import bars, console, steps_bar

    started = time.perf_counter()
    console.print(f"{config.name}: building {config.model.name}'s tokenizer and base model "
                  "(once; then cached) and checking the data")
    with bars() as bar, steps_bar(bar):
        api.prepare(config)
    console.print(
        f"{config.name}: {config.model.name} and its data ready in "
        f"{time.perf_counter() - started:.0f}s (models cached under {cache_root()})"
    )


def run(config: Config, verbose: bool = False, resume: bool = False) -> dict:
    from fedmem.data.federated import client_sizes, planted
    from fedmem.models.loading import load_tokenizer
    from fedmem.runs.report import console, print_summary, round_progress
    from fedmem.runs.run_log import notices

    with console.status("preparing data and the base model (built once, then cached)"):
        api.prepare(config)
    data = planted(config, load_tokenizer)
    injected = sum(1 for c in data.canaries if c.replicas)
    console.print(
        f"[bold]{config.name}[/]: {config.mode}, {config.model.name} ({config.model.finetuning}), "
        f"{config.federation.num_clients} clients x {config.federation.rounds} rounds, "
        f"{sum(client_sizes(config, load_tokenizer))} training samples, "
        f"{injected} canaries injected (+{len(data.canaries) - injected} twins)"
        + _audit_records_note(data.audit_records_in_training)
    )
    for notice in notices(config):
        console.print(notice)
    with round_progress(config.federation.rounds) as on_round:

        def progress(event: api.Event) -> None:
            if isinstance(event, api.RunStarted) and resume:
                done = event.resumed_after
                where = "from the start" if done is None else f"after round {done}"
                console.print(f"resuming {config.run_dir} {where}")
            elif isinstance(event, api.RoundAudited):
                on_round(event.row)

        result = api.run(config, progress, resume=resume, verbose=verbose)
    print_summary(result.summary, result.run_dir)
    return result.summary


def _audit_records_note(count: int) -> str:
    """The header's note on the DP audit records among the training samples, if any."""
    return f", {count} DP audit records among the training samples" if count else ""


def run_reaudit(args: argparse.Namespace) -> Path:
    from fedmem.runs.reaudit import reaudit_config
    from fedmem.runs.report import console, print_summary, round_progress

    rounds = reaudit_config(args.run_dir, args.overrides).federation.rounds
    with round_progress(rounds) as on_round:
        result = api.reaudit(args.run_dir, args.overrides, args.rounds, args.name,
                             lambda event: on_round(event.row))
    print_summary(result.summary, result.run_dir)
    console.print(f"re-audit written to {result.run_dir} (the run's own audit files are "
                  "unchanged)")
    return result.run_dir


def run_external_audit(args: argparse.Namespace) -> Path:
    from fedmem.runs.report import console, print_summary

    if args.run_dir or args.rounds or args.name:
        raise ConfigError("fedmem audit --model: give no RUN_DIR, --round or --name with it")
    if not args.canaries:
        raise ConfigError("fedmem audit --model: --canaries FILE.jsonl is required")
    if bool(args.members) != bool(args.nonmembers):
        raise ConfigError("fedmem audit --model: give --members and --nonmembers together")
    with console.status(f"auditing {args.model}"):
        result = api.audit_model(args.model, args.canaries, base=args.base,
                                 members=args.members, nonmembers=args.nonmembers,
                                 out=args.out, overrides=args.overrides)
    print_summary(result.summary, result.run_dir)
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"audit of {args.model} written to {result.run_dir}")
    return result.run_dir


def sweep(
    path: str,
    overrides: list[str],
    dry_run: bool = False,
    verbose: bool = False,
    parallel: int = 1,
    cell: str | None = None,
) -> None:
    from fedmem.drivers.sweep import describe_cells, load_sweep
    from fedmem.runs.report import console

    if cell is not None:  # one cell of a parallel sweep, in its own process
        api.sweep_cell(path, cell, overrides, verbose=verbose)
        return
    spec = load_sweep(path, overrides)  # every cell validated before anything runs
    if dry_run:
        print_cells(spec.name, spec.folder, describe_cells(spec))
        return
    how = "one after another" if parallel == 1 else f"up to {parallel} at once"
    console.print(
        f"[bold]{spec.name}[/]: {len(spec.cells)} cells ({' x '.join(spec.axes)}), run "
        f"{how} in {spec.folder}"
    )
    with sweep_progress(len(spec.cells)) as progress:
        result = api.sweep(path, overrides, progress, verbose=verbose, parallel=parallel)
    console.print(f"{len(result.ran)} cells run now, {len(result.cells) - len(result.ran)} "
                  "already finished")
    report(str(result.folder))


def report(path: str) -> None:
    from fedmem.runs.report import console, print_report

    with console.status("ingesting runs and drawing figures"):
        written = api.report(path)
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
def sweep_progress(total: int) -> Iterator[api.Progress]:
    """Bars over a sweep's cells, the current cell's rounds and the round's step, each with
    the time left; yields the progress callback of `api.sweep`, which also prints one line
    per finished or skipped cell (off a terminal, those lines alone)."""
    from fedmem.runs.report import bars, steps_bar

    with bars() as progress, steps_bar(progress):
        cells = progress.add_task("cells", total=total)
        rounds = progress.add_task("rounds", total=1)

        def on_event(event: api.Event) -> None:
            if isinstance(event, api.CellStarted):
                progress.update(rounds, total=event.rounds, completed=0,
                                description=f"rounds of {event.name}")
            elif isinstance(event, api.RoundAudited):
                progress.update(rounds, completed=event.round)
            elif isinstance(event, api.CellFinished):
                progress.update(cells, advance=1)
                head = f"cell {event.index + 1}/{total} {event.name}: "
                if event.skipped:
                    progress.console.print(head + "finished before, skipped")
                    return
                summary = json.loads((event.run_dir / "summary.json").read_text())
                final = summary["final"]
                progress.console.print(
                    head + f"exact {final['extraction']['injected']['exact_rate']:.1%}  "
                    f"token acc {final['extraction']['injected']['token_accuracy']:.1%}  "
                    f"held-out ppl {final['heldout_perplexity']:.2f}  "
                    f"({summary['wall_time_s']:.0f}s)"
                )

        yield on_event


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
            config = api.resume_config(Path(resume), args.config, args.overrides)
        elif args.config is None:
            raise ConfigError("fedmem run: give a CONFIG file, or --resume RUN_DIR")
        else:
            overrides = list(args.overrides)
            if getattr(args, "nodes", None) is not None:
                overrides.append(f"federation.num_clients={args.nodes}")
            config = api.load_config(args.config, overrides)
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
