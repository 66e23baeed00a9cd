"""`make bench`: fedmem's speed ratios, each measured side by side in one run.

Every ratio compares two measurements taken back to back on the same machine in the same
run, so machine load shifts both sides; the table is printed and appended, with machine
facts, under "Speed ratios (make bench)" in benchmarks/RESULTS.md.

Simulations run in fresh subprocesses (`--worker`), so that Ray, caches and peak memory of
one measurement never leak into the next; the timings they report exclude interpreter start
and imports. Sizes are the quickstart's model and data unless a row says otherwise:

- FL / plain loop: configs/quickstart.toml with 3 of its 8 rounds (4 local epochs each),
  audits every round on both sides; the plain loop trains the same clients on the same
  rows with the same seeds, averages in numpy and audits with the same recorder.
- DP-SGD steps: client 0's rows, batch 8, 12 steps after 2 warm-up steps.
- SecAgg+: 10 clients with LoRA, 2 local steps, 3 rounds; the fit stage's server-measured
  wall time, mean of rounds 2-3 (round 1 pays the actors' start-up).
- Extraction: the warm-started base model and all the quickstart's canaries and twins.
- Scale: 100 clients sampling 0.1 vs 3 clients (peak RSS of the whole process tree, Ray's
  daemons included, polled every 0.1 s) and vs 10 clients sampling 1.0 (same sampled count:
  the fit-stage time should not grow with total clients); 2 local steps, 3 rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
HEADING = "## Speed ratios (make bench)"
QUICKSTART = REPO / "configs" / "quickstart.toml"


def load(overrides: list[str], out_dir: str):
    from fedmem.config import load_config

    return load_config(QUICKSTART, [*overrides, f"output.dir={json.dumps(out_dir)}"])


# --------------------------------------------------------------------------- workers


def worker_federated(config) -> dict:
    import logging

    from fedmem.federation import run_federated
    from fedmem.results import read_jsonl

    logging.getLogger("flwr").setLevel(logging.ERROR)
    start = time.perf_counter()
    run_federated(config)
    wall = time.perf_counter() - start
    rows = read_jsonl(config.run_dir / "metrics.jsonl")
    fit = [r["fit_stage"]["seconds"] for r in rows if r["round"] >= 2 and "fit_stage" in r]
    return {
        "wall_s": wall,
        # From the ServerApp's start to its last audit: the run without Ray's start-up,
        # the actor pool's start and the shutdown.
        "server_s": rows[-1]["elapsed_s"],
        "fit_stage_s": statistics.mean(fit),
        "rounds": len(rows) - 1,
    }


def worker_plain(config) -> dict:
    """The same local steps and audits as the FL run, in one plain loop, no Flower."""
    import numpy as np
    import torch

    from clients.app import client_rows, training_seed
    from fedmem.models import build_model, get_trainable_state, load_tokenizer
    from fedmem.models import set_trainable_state as set_state
    from fedmem.results import RunRecorder
    from fedmem.training import train_local

    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    recorder = RunRecorder(config)
    recorder.start()
    model = build_model(config, seed=config.seed)
    pad_id = load_tokenizer(config).pad_token_id
    global_state = get_trainable_state(model)
    recorder.record(0, model)
    for server_round in range(1, config.federation.rounds + 1):
        updates, weights = [], []
        for client in range(config.federation.num_clients):
            set_state(model, global_state)
            rows = client_rows(config, client)
            seed = training_seed(config, server_round, client)
            train_local(model, rows, config.training, pad_id, seed)
            updates.append(get_trainable_state(model))
            weights.append(len(rows))
        total = sum(weights)
        global_state = [
            sum(w * u[i] for w, u in zip(weights, updates, strict=True)) / total
            for i in range(len(global_state))
        ]
        global_state = [np.asarray(a, dtype=np.float32) for a in global_state]
        set_state(model, global_state)
        recorder.record(server_round, model)
    recorder.finish(model)
    return {"wall_s": time.perf_counter() - start}


WORKERS = {"federated": worker_federated, "plain": worker_plain}


def run_worker(kind: str, overrides: list[str], out_dir: str) -> dict:
    """Run a worker in a fresh interpreter; its result plus the peak RSS of its process tree."""
    cmd = [sys.executable, "-m", "benchmarks.speed_ratios", "--worker", kind, *overrides]
    env = {**os.environ, "BENCH_OUT": out_dir}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        total = 0
        with contextlib.suppress(psutil.Error):
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
        peak = max(peak, total)
        time.sleep(0.1)
    out = proc.stdout.read()
    if proc.returncode:
        raise RuntimeError(f"bench worker {kind} {overrides} failed ({proc.returncode})")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": peak / 2**20}


# --------------------------------------------------------------------------- in-process rows


def step_seconds(config, private: bool, steps: int = 12, warmup: int = 2) -> float:
    """Seconds per optimizer step of the one training loop, plain or DP-SGD."""
    import torch

    from clients.app import client_rows, private_training_for
    from fedmem.models import build_model, load_tokenizer
    from fedmem.training import StepVariant, train_local

    rows = client_rows(config, 0)
    pad_id = load_tokenizer(config).pad_token_id
    variant = private_training_for(config, len(rows), None).variant if private else StepVariant
    model = build_model(config, seed=config.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = dataclasses.replace(config.training, batch_size=8, local_steps=warmup)
    train_local(model, rows, cfg, pad_id, 0, variant)
    cfg = dataclasses.replace(cfg, local_steps=steps)
    start = time.perf_counter()
    train_local(model, rows, cfg, pad_id, 1, variant)
    return (time.perf_counter() - start) / steps


def extraction_rates(config, per_prompt_limit: int = 16) -> tuple[float, float]:
    """Canaries per second: `extract` (batched) vs one `generate` call per canary."""
    from attacks.extraction import extract, greedy_continuations
    from fedmem.audit import extraction_targets
    from fedmem.models import build_model, load_tokenizer

    model = build_model(config, seed=config.seed).eval()
    pad_id = load_tokenizer(config).pad_token_id
    targets = extraction_targets(config)
    extract(model, targets[:4], pad_id, config.attack.batch_size)  # warm-up
    start = time.perf_counter()
    extract(model, targets, pad_id, config.attack.batch_size)
    batched = len(targets) / (time.perf_counter() - start)
    start = time.perf_counter()
    for t in targets[:per_prompt_limit]:
        greedy_continuations(model, [t.prefix_ids], len(t.suffix_ids), pad_id)
    single = per_prompt_limit / (time.perf_counter() - start)
    return batched, single


# --------------------------------------------------------------------------- the table


def measure(out: str) -> list[tuple[str, float, str, str]]:
    """(row, ratio, goal, detail) for every row of the table."""
    rows = []

    fl_size = ["federation.rounds=3"]
    fl = run_worker("federated", [*fl_size, "name=fl"], out)
    plain = run_worker("plain", [*fl_size, "name=plain"], out)
    rows.append(
        (
            "FL simulation wall / plain PyTorch loop (quickstart, 3 of its 8 rounds)",
            fl["wall_s"] / plain["wall_s"],
            "<= 1.15",
            f"{fl['wall_s']:.1f} s vs {plain['wall_s']:.1f} s",
        )
    )
    rows.append(
        (
            "... the same without Ray's start-up and shutdown (ServerApp start to last audit)",
            fl["server_s"] / plain["wall_s"],
            "-",
            f"{fl['server_s']:.1f} s vs {plain['wall_s']:.1f} s",
        )
    )

    for finetuning in ("lora", "full"):
        base = load([f"model.finetuning={finetuning}"], out)
        dp = load([f"model.finetuning={finetuning}", "dp_sgd.enabled=true"], out)
        plain_s, dp_s = step_seconds(base, private=False), step_seconds(dp, private=True)
        rows.append(
            (
                f"{'LoRA' if finetuning == 'lora' else 'full'} DP-SGD step / "
                f"{'LoRA' if finetuning == 'lora' else 'full'} step (batch 8)",
                dp_s / plain_s,
                "<= 1.10" if finetuning == "lora" else "-",
                f"{dp_s * 1e3:.0f} ms vs {plain_s * 1e3:.0f} ms",
            )
        )

    secagg_size = [
        "model.finetuning=lora",
        "federation.num_clients=10",
        "federation.rounds=3",
        "training.local_steps=2",
    ]
    plain_round = run_worker("federated", [*secagg_size, "name=plain10"], out)
    secure_round = run_worker(
        "federated", [*secagg_size, "secagg.enabled=true", "name=secagg10"], out
    )
    rows.append(
        (
            "SecAgg+ round / plain round (10 clients, LoRA adapters)",
            secure_round["fit_stage_s"] / plain_round["fit_stage_s"],
            "<= 1.3",
            f"{secure_round['fit_stage_s']:.2f} s vs {plain_round['fit_stage_s']:.2f} s",
        )
    )

    batched, single = extraction_rates(load([], out))
    rows.append(
        (
            "batched extraction / one-prompt generate (canaries/s)",
            batched / single,
            ">= 10",
            f"{batched:.1f}/s vs {single:.2f}/s",
        )
    )

    scale = ["training.local_steps=2", "federation.rounds=3"]
    many = run_worker(
        "federated",
        [*scale, "federation.num_clients=100", "federation.fraction_fit=0.1", "name=c100"],
        out,
    )
    few = run_worker("federated", [*scale, "federation.num_clients=3", "name=c3"], out)
    ten = run_worker("federated", [*scale, "federation.num_clients=10", "name=c10"], out)
    rows.append(
        (
            "peak RSS, 100 clients (sampling 0.1) / 3 clients",
            many["peak_rss_mb"] / few["peak_rss_mb"],
            "<= 1.5",
            f"{many['peak_rss_mb']:.0f} MB vs {few['peak_rss_mb']:.0f} MB",
        )
    )
    rows.append(
        (
            "fit-stage time, 100 clients sampling 0.1 / 10 clients sampling 1.0",
            many["fit_stage_s"] / ten["fit_stage_s"],
            "~ 1",
            f"{many['fit_stage_s']:.2f} s vs {ten['fit_stage_s']:.2f} s (10 sampled each)",
        )
    )
    return rows


def machine_facts() -> str:
    import flwr
    import torch

    load1, load5, _ = os.getloadavg()
    return (
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.node() or 'host'}: "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"load average {load1:.1f}/{load5:.1f} at the end (machine shared with other jobs), "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"flwr {flwr.__version__}, torch threads per plain process = CPU count"
    )


def table(rows: list[tuple[str, float, str, str]], seconds: float) -> str:
    lines = [
        f"### {machine_facts()}",
        "",
        f"Whole bench: {seconds:.0f} s.",
        "",
        "| ratio | measured | goal | sides |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {value:.2f} | {goal} | {detail} |" for name, value, goal, detail in rows]
    return "\n".join(lines) + "\n"


def append_results(text: str) -> None:
    from fedmem.results import atomic_write_text

    existing = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    if HEADING not in existing:
        existing = existing.rstrip("\n") + f"\n\n{HEADING}\n\n{SECTION_INTRO}\n"
    head, _, tail = existing.partition(HEADING)
    # Insert the new run at the end of this section (before the next "## " heading).
    body, sep, rest = tail.partition("\n## ")
    updated = head + HEADING + body.rstrip("\n") + "\n\n" + text + (sep + rest if sep else "")
    atomic_write_text(RESULTS, updated)


SECTION_INTRO = (
    "Appended by `make bench` (benchmarks/speed_ratios.py; sizes in its docstring). Each "
    "ratio's two sides are measured back to back in one run."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=sorted(WORKERS))
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--no-append", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.worker:
        config = load(args.overrides, os.environ["BENCH_OUT"])
        print(json.dumps(WORKERS[args.worker](config)))
        return 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedmem-bench-") as out:
        load([], out)  # validates the quickstart before anything runs
        rows = measure(out)
    text = table(rows, time.perf_counter() - start)
    print(text)
    if not args.no_append:
        append_results(text)
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
