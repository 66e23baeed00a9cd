"""`fedmem` command line: run a federated (or centralized) fine-tuning with audits."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from fedmem.config import Config, ConfigError, load_config, to_dict, to_run_config
from fedmem.qa import DataError

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
    audit = sub.add_parser(
        "audit", help="re-audit a finished run's saved rounds with other attack settings"
    )
    audit.add_argument("run_dir", help="a run folder, e.g. runs/quickstart")
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
    show = sub.add_parser("config", help="print the resolved config")
    show.add_argument("config")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.add_argument(
        "--flower",
        action="store_true",
        help="print it as Flower's flat run config ([tool.flwr.app.config] in pyproject.toml)",
    )
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
        if config.mode == "centralized":
            from fedmem.centralized import run_centralized

            run_centralized(config, on_round=on_round)
        else:
            from fedmem.federation import run_federated

            if not verbose:  # after the import: importing flwr resets its logger's level
                logging.getLogger("flwr").setLevel(logging.ERROR)
            run_federated(config, on_round=on_round)
    summary_path = config.run_dir / "summary.json"
    if not summary_path.exists():
        raise RuntimeError(f"the run ended without writing {summary_path}; see the log above")
    summary = json.loads(summary_path.read_text())
    print_summary(summary, config.run_dir)
    return summary


def run_reaudit(args: argparse.Namespace) -> Path:
    from fedmem.reaudit import reaudit, reaudit_config
    from fedmem.report import console, print_summary, round_progress

    rounds = reaudit_config(args.run_dir, args.overrides).federation.rounds
    with round_progress(rounds) as on_round:
        folder = reaudit(args.run_dir, args.overrides, args.rounds, args.name, on_round)
    print_summary(json.loads((folder / "summary.json").read_text()), folder)
    console.print(f"re-audit written to {folder} (the run's own audit files are unchanged)")
    return folder


def flower_table(config: Config) -> str:
    lines = ["[tool.flwr.app.config]"]
    lines += [f'"{key}" = {json.dumps(value)}' for key, value in to_run_config(config).items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "audit":
            run_reaudit(args)
            return 0
        config = load_config(args.config, args.overrides)
        if args.command == "config":
            print(flower_table(config) if args.flower else json.dumps(to_dict(config), indent=2))
            return 0
        run(config, verbose=args.verbose)
    except (ConfigError, DataError) as err:
        print(f"fedmem: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
