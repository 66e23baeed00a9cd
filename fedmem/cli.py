"""`fedmem` command line: run a federated (or centralized) fine-tuning with audits."""

from __future__ import annotations

import argparse
import json
import logging
import sys

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
    show = sub.add_parser("config", help="print the resolved config")
    show.add_argument("config")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.add_argument(
        "--flower",
        action="store_true",
        help="print it as Flower's flat run config ([tool.flwr.app.config] in pyproject.toml)",
    )
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


def deploy(config: Config, workdir: str | None) -> int:
    import tempfile
    from pathlib import Path

    from fedmem.deployment import deploy_local
    from fedmem.report import print_summary

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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        overrides = list(args.overrides)
        if getattr(args, "nodes", None) is not None:
            overrides.append(f"federation.num_clients={args.nodes}")
        config = load_config(args.config, overrides)
        if args.command == "deploy-local":
            return deploy(config, args.workdir)
        if args.command == "config":
            print(flower_table(config) if args.flower else json.dumps(to_dict(config), indent=2))
            return 0
        run(config, verbose=args.verbose)
    except (ConfigError, DataError) as err:
        print(f"fedmem: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except RuntimeError as err:  # a deployment that failed to start or to run
        from fedmem.deployment import DeploymentError

        if not isinstance(err, DeploymentError):
            raise
        print(f"fedmem: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
