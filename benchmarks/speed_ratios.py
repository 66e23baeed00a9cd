"""`make bench`: fedmem's speed ratios, each measured side by side in one run.

Every ratio compares two measurements taken back to back on the same machine in the same
run; the table is printed and appended, with machine facts, under "Speed ratios (make
bench)" in benchmarks/RESULTS.md. Each row gives the ratio of wall times (what the goals
are stated in) and of CPU seconds (summed over every process and thread involved): on a
shared machine other jobs stretch wall times unevenly between the two sides, CPU seconds
much less. Every process uses one torch thread (each FL client does at `client_cpus` < 2,
and so do the FL server's audits and the plain loop), so both sides run the same kernels.

Simulations run in fresh subprocesses (`--worker`), so that Ray, caches and peak memory of
one measurement never leak into the next; the timings they report exclude interpreter start
and imports. Sizes are the quickstart's model and data unless a row says otherwise:

- FL / plain loop: configs/quickstart.toml with 4 rounds of 2 local epochs (quickstart: 8 of
  4; half of each so that the bench fits 15 minutes on 2 cores), audits every round on both
  sides; the plain loop trains the same clients on the same
  rows with the same seeds, averages in numpy and audits with the same recorder.
- DP-SGD steps: client 0's rows, batch 8, 12 steps after 2 warm-up steps, against the plain
  step: both as fedmem trains (each batch's rows in length groups,
  `fedmem.training.length_groups`), and both in one padded pass per batch. Those rows use
  opacus' hooks (the default `dp_sgd.grad_sample_mode`); the LoRA step is also measured with
  ghost clipping and with book-keeping, each against its own plain step (`--only dp-modes`
  runs all three modes alone).
- Greedy extraction against one forward (`--only extraction`, not in the whole bench): the
  quickstart's base model trained 50 full-batch steps on 12 canaries' records (so that some
  are exact), all 64 canaries and twins at prefix 64 / suffix 48, one thread; the audit
  (batched `generate`) and the five-prefix sweep (10, 20, 32, 48, 64) against one forward
  over prefix + suffix (fastest of 3 runs by CPU time; the sweep one run).
- SecAgg+: 10 clients with LoRA, 2 local steps, 3 rounds; the fit stage's server-measured
  wall time, mean of rounds 2-3 (round 1 pays the actors' start-up).
- Extraction: the warm-started base model and all the quickstart's canaries and twins.
- Every simulation gives each client one CPU (`federation.client_cpus = 1`: 2 Ray actors
  on 2 cores; the quickstart's 0.5 starts 4).
- Scale: 100 clients sampling 0.1 vs 3 clients (peak RSS of the whole process tree, Ray's
  daemons included, polled every 0.1 s) and vs 10 clients sampling 1.0 (same sampled count:
  the fit-stage time should not grow with total clients); 2 local steps, 3 rounds.
- Clients (`--only clients` runs these rows alone): 1,000 clients sampling 10 per round
  against 10 clients all sampled, about 30 training rows per client on both sides, the same
  audits (one canary per replica count, `data.heldout_sample = 30`), 2 local steps, 2
  rounds: each round's server-side wall time (training, aggregation, audits; round 0 is the
  first audit, round 1 pays the actors' start and their data) and the process tree's peak
  RSS.
- Likelihood pass (`attacks.likelihood.token_logprobs`, behind MIA, exposure, utility and the
  DP audit): a narrow random Llama built from `LlamaConfig` (hidden 64, 2 layers, Llama-3's
  128,256-token vocabulary, nothing downloaded), rows of 1,024 random tokens, min-k%++
  moments on, one thread. The chunked pass at 32 rows against the whole-logits pass it
  replaced (benchmarks/whole_logits.py) at 1 and 2 rows; the whole-logits pass at 32 rows
  would need about 141 GiB, so its figure there is extrapolated, never run. Each variant runs
  in a fresh subprocess; its peak memory growth is the kernel's high-water mark of the
  process' RSS (VmHWM, reset through /proc/self/clear_refs just before the pass) minus its
  RSS then: exact, no sampling. `--only likelihood` runs these rows alone.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.results_file import append_to_section

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
HEADING = "## Speed ratios (make bench)"
QUICKSTART = REPO / "configs" / "quickstart.toml"


# `--set` overrides applied under every row's own (e.g. a smaller model for a quick check).
EXTRA: list[str] = []


def load(overrides: list[str], out_dir: str):
    from fedmem.config import load_config

    return load_config(QUICKSTART, [*EXTRA, *overrides, f"output.dir={json.dumps(out_dir)}"])


# --------------------------------------------------------------------------- workers


def worker_federated(config) -> dict:
    import logging

    import torch

    from fedmem.drivers.simulation import run_federated
    from fedmem.files import read_jsonl

    logging.getLogger("flwr").setLevel(logging.ERROR)
    torch.set_num_threads(1)  # the ServerApp's audits, like the plain loop's
    before = time.process_time()
    start = time.perf_counter()
    run_federated(config)
    wall = time.perf_counter() - start
    rows = read_jsonl(config.run_dir / "metrics.jsonl")
    for row in rows[1:]:
        if len(row["clients"]) != config.sampled_clients():
            raise RuntimeError(
                f"round {row['round']}: {len(row['clients'])} of {config.sampled_clients()} "
                "clients reported; a failed round's time is not comparable"
            )
    fit = [r["fit_stage"]["seconds"] for r in rows if r["round"] >= 2 and "fit_stage" in r]
    elapsed = [r["elapsed_s"] for r in rows]
    return {
        # Each round's wall time on the server: training, aggregation and audits (round 0:
        # the first audit alone, from the ServerApp's start).
        "round_s": [elapsed[0], *(b - a for a, b in itertools.pairwise(elapsed))],
        "wall_s": wall,
        "cpu_before_s": before,
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
    from fedmem.mitigations import registry
    from fedmem.mitigations.local_fit import local_fit
    from fedmem.models.loading import build_model, get_trainable_state, load_tokenizer
    from fedmem.models.loading import set_trainable_state as set_state
    from fedmem.runs.recorder import RunRecorder

    torch.set_num_threads(1)  # as each FL client (client_cpus < 2) and the FL audits
    before = time.process_time()
    start = time.perf_counter()
    recorder = RunRecorder(config)
    recorder.start()
    model = build_model(config, seed=config.seed)
    pad_id = load_tokenizer(config).pad_token_id
    global_state = get_trainable_state(model)
    recorder.record(0, model)
    histories: dict[int, dict | None] = {}  # each client's step-variant history (DP-SGD)
    for server_round in range(1, config.federation.rounds + 1):
        updates, weights = [], []
        for client in range(config.federation.num_clients):
            set_state(model, global_state)
            rows, prompts = client_rows(config, client)
            seed = training_seed(config, server_round, client)
            fit = local_fit(config, model, rows, prompts, pad_id, seed, histories.get(client))
            histories[client] = fit.history()
            updates.append(get_trainable_state(model))
            weights.append(registry.client_weight(config, len(rows)))
        total = sum(weights)
        global_state = [
            sum(w * u[i] for w, u in zip(weights, updates, strict=True)) / total
            for i in range(len(global_state))
        ]
        global_state = [np.asarray(a, dtype=np.float32) for a in global_state]
        set_state(model, global_state)
        recorder.record(server_round, model)
    recorder.finish(model)
    return {"wall_s": time.perf_counter() - start, "cpu_before_s": before}


WORKERS = {"federated": worker_federated, "plain": worker_plain}


def run_worker(kind: str, overrides: list[str], out_dir: str) -> dict:
    """Run a worker in a fresh interpreter; its result, the peak RSS of its process tree
    (Ray's daemons and actors included) and the CPU seconds the tree spent after the
    worker's imports (`cpu_s`: the load-independent measure of the work done)."""
    cmd = [sys.executable, "-m", "benchmarks.speed_ratios", "--worker", kind, *EXTRA, *overrides]
    # Ray's memory monitor kills actors when the *machine* is short of memory, whoever uses
    # it; on a shared machine that turns a measurement into a failed round.
    env = {**os.environ, "BENCH_OUT": out_dir, "RAY_memory_monitor_refresh_ms": "0"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    root, peak = psutil.Process(proc.pid), 0
    cpu: dict[tuple[int, float], float] = {}  # (pid, start time) -> last CPU seconds seen
    while proc.poll() is None:
        total = 0
        with contextlib.suppress(psutil.Error):
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error), p.oneshot():
                    total += p.memory_info().rss
                    times = p.cpu_times()
                    cpu[(p.pid, p.create_time())] = times.user + times.system
        peak = max(peak, total)
        time.sleep(0.1)
    out = proc.stdout.read()
    if proc.returncode:
        raise RuntimeError(f"bench worker {kind} {overrides} failed ({proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    return {
        **result,
        "peak_rss_mb": peak / 2**20,
        "cpu_s": sum(cpu.values()) - result["cpu_before_s"],
    }


# --------------------------------------------------------------------------- in-process rows


@dataclasses.dataclass(frozen=True)
class Timing:
    wall_s: float
    cpu_s: float  # CPU seconds of this process (all threads): what load does not inflate


@contextlib.contextmanager
def timed():
    """Yields a dict that gets the block's wall and CPU seconds."""
    result: dict[str, Timing] = {}
    wall, cpu = time.perf_counter(), time.process_time()
    yield result
    result["t"] = Timing(time.perf_counter() - wall, time.process_time() - cpu)


def step_time(config, kind: str, steps: int = 12, warmup: int = 2) -> Timing:
    """Time per optimizer step of client 0's local fit (one thread). `kind`: "plain" or
    "dp" (the config turns DP-SGD on), as fedmem trains (each batch's rows in length
    groups), or with "-one-pass" (one padded pass per batch)."""
    import torch

    from clients.app import client_rows
    from fedmem.mitigations.local_fit import local_fit
    from fedmem.models.loading import build_model, load_tokenizer

    if kind.startswith("dp") != config.dp_sgd.enabled:
        raise ValueError(f"step kind {kind!r} with dp_sgd.enabled = {config.dp_sgd.enabled}")

    def one_pass(factory):
        def variant(*args):
            made = factory(*args)
            made.groups = lambda lengths: [list(range(len(lengths)))]
            return made

        return variant

    torch.set_num_threads(1)
    rows, prompts = client_rows(config, 0)
    pad_id = load_tokenizer(config).pad_token_id
    wrap = one_pass if kind.endswith("-one-pass") else None
    model = build_model(config, seed=config.seed)
    cfg = dataclasses.replace(config.training, batch_size=8, local_steps=warmup)
    fit = local_fit(config, model, rows, prompts, pad_id, 0, training=cfg, wrap_variant=wrap)
    cfg = dataclasses.replace(cfg, local_steps=steps)
    with timed() as t:
        local_fit(
            config, model, rows, prompts, pad_id, 1, fit.history(), training=cfg, wrap_variant=wrap
        )
    return Timing(t["t"].wall_s / steps, t["t"].cpu_s / steps)


def extraction_times(config, per_prompt_limit: int = 16) -> tuple[Timing, Timing]:
    """Time per canary: `extract` (batched) vs one `generate` call per canary (one thread)."""
    import torch

    from attacks.extraction import extract, greedy_continuations
    from fedmem.audits.model_audit import extraction_targets
    from fedmem.models.loading import build_model, load_tokenizer

    torch.set_num_threads(1)
    model = build_model(config, seed=config.seed).eval()
    pad_id = load_tokenizer(config).pad_token_id
    targets = extraction_targets(config)
    extract(model, targets[:4], pad_id, config.attack.batch_size)  # warm-up
    with timed() as batched:
        extract(model, targets, pad_id, config.attack.batch_size)
    with timed() as single:
        for t in targets[:per_prompt_limit]:
            greedy_continuations(model, [t.prefix_ids], len(t.suffix_ids), pad_id)
    b, o = batched["t"], single["t"]
    n = len(targets)
    return (
        Timing(b.wall_s / n, b.cpu_s / n),
        Timing(o.wall_s / per_prompt_limit, o.cpu_s / per_prompt_limit),
    )


# --------------------------------------------------------------------------- greedy extraction

SWEEP = (10, 20, 32, 48, 64)  # the five-prefix sweep; the quickstart's headline is 64
MEMORIZED = 12  # canaries the bench model is trained on, so that some are extracted exactly


def _left_padded(rows, pad_id: int):
    """Input ids, attention mask and position ids of a left-padded batch (positions as
    `generate` derives them from the mask)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask, (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def measure_extraction() -> tuple[list[Row], str]:
    """The greedy extraction audit (`attacks.extraction.extract`, batched `generate`) and the
    five-prefix sweep against one forward pass over the same canaries (prefix + suffix, every
    position's logits: what deciding greedy by teacher forcing would cost); the quickstart's
    base model trained 50 full-batch steps on MEMORIZED canaries' records, one thread, the
    fastest of 3 runs (CPU time)."""
    import torch

    from attacks.extraction import extract, summarize
    from fedmem.audits.extraction import extraction_targets
    from fedmem.models.loading import build_model, load_tokenizer

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="fedmem-bench-") as out:
        config = load([], out)
    model = build_model(config, seed=config.seed)
    pad, batch = load_tokenizer(config).pad_token_id, config.attack.batch_size
    targets = extraction_targets(config)
    ids, mask, positions = _left_padded(
        [t.prefix_ids + t.suffix_ids for t in targets[:MEMORIZED]], pad
    )
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(50):
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, labels=labels)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    sweep = [extraction_targets(config, n) for n in SWEEP]

    @torch.no_grad()
    def forward() -> None:
        for i in range(0, len(targets), batch):
            chunk = targets[i : i + batch]
            ids, mask, positions = _left_padded([t.prefix_ids + t.suffix_ids for t in chunk], pad)
            model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)

    def best(fn, repeats: int = 3):
        fastest, result = None, None
        for _ in range(repeats):
            with timed() as t:
                result = fn()
            if fastest is None or t["t"].cpu_s < fastest.cpu_s:
                fastest = t["t"]
        return fastest, result

    extract(model, targets[:4], pad, batch)  # warm-up
    fwd, _ = best(forward)
    audit, found = best(lambda: extract(model, targets, pad, batch))
    swept_t, swept = best(lambda: [extract(model, t, pad, batch) for t in sweep], 1)
    s = summarize(found)
    size = f"{len(targets)} canaries, prefix {config.attack.prefix_tokens} / suffix "
    size += str(config.attack.suffix_tokens)
    rows: list[Row] = [
        (
            f"greedy extraction audit / one forward ({size})",
            audit.wall_s / fwd.wall_s,
            audit.cpu_s / fwd.cpu_s,
            "<= 1.5",
            f"CPU {audit.cpu_s:.2f} s vs {fwd.cpu_s:.2f} s; {s.exact_rate:.0%} exact, "
            f"{MEMORIZED} canaries trained on",
        ),
        (
            f"five-prefix sweep {SWEEP} / one forward at prefix {config.attack.prefix_tokens}",
            swept_t.wall_s / fwd.wall_s,
            swept_t.cpu_s / fwd.cpu_s,
            "<= 5",
            f"CPU {swept_t.cpu_s:.2f} s; exact per prefix "
            + ", ".join(f"{summarize(r).exact_rate:.0%}" for r in swept),
        ),
    ]
    return rows, ""


# --------------------------------------------------------------------------- likelihood pass

# The narrow random Llama of the likelihood rows: Llama-3's vocabulary, a tiny body, so that
# the vocabulary-wide work is what is measured.
LIKELIHOOD_MODEL = {
    "vocab_size": 128_256,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
}
LIKELIHOOD_TOKENS = 1024
LIKELIHOOD_ROWS = 32  # the paper presets' attack batch
LIKELIHOOD_GOAL_GIB = 0.5


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


class PeakRSS:
    """Peak RSS growth of this process over a block, in bytes. On Linux the kernel's own
    high-water mark (VmHWM), reset to the current RSS through /proc/self/clear_refs when the
    block starts: exact, however short the peak. Elsewhere a thread samples RSS every
    millisecond (a lower bound: a shorter peak can be missed); `method` says which."""

    def __enter__(self):
        self.base = psutil.Process().memory_info().rss
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = _rss_kb("VmRSS") * 1024
            self.method = "VmHWM"
        except OSError:
            import threading

            self.method, self.peak, self.done = "sampled", self.base, threading.Event()

            def sample():
                me = psutil.Process()
                while not self.done.wait(0.001):
                    self.peak = max(self.peak, me.memory_info().rss)

            self.thread = threading.Thread(target=sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.method == "VmHWM":
            self.peak = _rss_kb("VmHWM") * 1024
        else:
            self.done.set()
            self.thread.join()
            self.peak = max(self.peak, psutil.Process().memory_info().rss)
        self.growth = self.peak - self.base


def worker_likelihood(variant: str, rows: int, tokens: int) -> dict:
    """One likelihood pass over `rows` random rows of `tokens` tokens, with the moments, in
    one batch: "chunked" (attacks.likelihood) or "whole-logits" (the pass it replaced)."""
    import gc

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from attacks.likelihood import token_logprobs
    from benchmarks.whole_logits import whole_logits_token_logprobs

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = LlamaConfig(**LIKELIHOOD_MODEL, max_position_embeddings=tokens)
    model = LlamaForCausalLM(config).eval()
    draw = torch.Generator().manual_seed(1)
    batch = torch.randint(1, config.vocab_size, (rows, tokens), generator=draw).tolist()
    score = {"chunked": token_logprobs, "whole-logits": whole_logits_token_logprobs}[variant]
    score(model, [batch[0][:16]], 0, moments=True)  # warm-up: kernels, allocator
    gc.collect()
    with PeakRSS() as rss, timed() as t:
        scores = score(model, batch, 0, batch_size=rows, moments=True)
    first = scores[0]
    return {
        "variant": variant,
        "rows": rows,
        "tokens": tokens,
        "growth_bytes": rss.growth,
        "rss_method": rss.method,
        "wall_s": t["t"].wall_s,
        "cpu_s": t["t"].cpu_s,
        # Row 0 is the same row in every variant: its sums show the variants agree.
        "row0_logprob": float(first.logprob.sum()),
        "row0_mean": float(first.mean.sum()),
    }


def run_likelihood_worker(variant: str, rows: int, tokens: int = LIKELIHOOD_TOKENS) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.speed_ratios", "--likelihood-worker", variant]
    out = subprocess.run(
        [*cmd, str(rows), str(tokens)], cwd=REPO, check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure_likelihood() -> tuple[list[Row], str]:
    """The likelihood rows, and a table of every variant measured."""
    gb = 2**30  # GiB, as the figures (4.4 per row with moments, ~141 at 32 rows)
    chunked = run_likelihood_worker("chunked", LIKELIHOOD_ROWS)
    whole = [run_likelihood_worker("whole-logits", 1)]
    # The whole-logits pass grows by about 4.4 GiB a row: 2 rows only with room to spare.
    if psutil.virtual_memory().available > 3 * whole[0]["growth_bytes"]:
        whole.append(run_likelihood_worker("whole-logits", 2))
    one = whole[0]
    per_row = whole[1]["growth_bytes"] - one["growth_bytes"] if len(whole) > 1 else None
    at_32 = one["growth_bytes"] + (LIKELIHOOD_ROWS - 1) * (per_row or one["growth_bytes"])
    basis = "1 and 2 rows" if per_row else "1 row, times 32"
    row_time = {k: chunked[k] / chunked["rows"] for k in ("wall_s", "cpu_s")}
    agree = abs(chunked["row0_logprob"] - one["row0_logprob"])
    rows: list[Row] = [
        (
            f"likelihood pass peak RSS growth, chunked {LIKELIHOOD_ROWS} x 1,024 / whole "
            "logits 1 x 1,024 (vocab 128,256, moments)",
            chunked["growth_bytes"] / one["growth_bytes"],
            math.nan,
            f"chunked <= {LIKELIHOOD_GOAL_GIB} GiB",
            f"{chunked['growth_bytes'] / gb:.3f} GiB vs {one['growth_bytes'] / gb:.2f} GiB "
            f"(whole logits at {LIKELIHOOD_ROWS} rows: ~{at_32 / gb:.0f} GiB, from {basis}; "
            f"{chunked['rss_method']})",
        ),
        (
            f"likelihood pass time per row, chunked at {LIKELIHOOD_ROWS} rows / whole logits "
            "at 1 row",
            row_time["wall_s"] / one["wall_s"],
            row_time["cpu_s"] / one["cpu_s"],
            "<= 1",
            f"CPU {row_time['cpu_s']:.2f} s vs {one['cpu_s']:.2f} s per row; row 0's "
            f"log-likelihood differs by {agree:.1e} nats",
        ),
    ]
    lines = [
        "| variant | rows x tokens | peak RSS growth GiB | seconds (wall; CPU) | "
        "per row, / whole logits at 1 row (wall; memory) |",
        "|---|---|---|---|---|",
    ]
    for r in [chunked, *whole]:
        lines.append(
            f"| {r['variant']} | {r['rows']} x {r['tokens']:,} | {r['growth_bytes'] / gb:.3f} | "
            f"{r['wall_s']:.1f}; {r['cpu_s']:.1f} | "
            f"{r['wall_s'] / r['rows'] / one['wall_s']:.2f}; "
            f"{r['growth_bytes'] / r['rows'] / one['growth_bytes']:.3f} |"
        )
    lines.append(
        f"| whole-logits, extrapolated (not run) | {LIKELIHOOD_ROWS} x 1,024 | "
        f"~{at_32 / gb:.0f} | - | - |"
    )
    return rows, "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the table

# Every simulation: one CPU per client, so 2 Ray actors on 2 cores (the quickstart's 0.5
# starts 4, whose imports alone cost about 4 CPU seconds each).
SIMULATION = ["federation.client_cpus=1"]

# (row, wall ratio, CPU-time ratio, goal, the two sides)
Row = tuple[str, float, float, str, str]


def measure(out: str) -> tuple[list[Row], str]:
    """Every row, and the likelihood variants' own table."""
    rows: list[Row] = []

    fl_size = ["federation.rounds=4", "training.local_epochs=2", *SIMULATION]
    fl = run_worker("federated", [*fl_size, "name=fl"], out)
    plain = run_worker("plain", [*fl_size, "name=plain"], out)
    rows.append(
        (
            "FL simulation / plain PyTorch loop (quickstart, 4 rounds of 2 epochs)",
            fl["wall_s"] / plain["wall_s"],
            fl["cpu_s"] / plain["cpu_s"],
            "<= 1.15",
            f"wall {fl['wall_s']:.1f} s vs {plain['wall_s']:.1f} s; "
            f"CPU {fl['cpu_s']:.1f} s vs {plain['cpu_s']:.1f} s",
        )
    )
    rows.append(
        (
            "... FL from the ServerApp's start to its last audit (no Ray start-up) / plain",
            fl["server_s"] / plain["wall_s"],
            math.nan,
            "-",
            f"wall {fl['server_s']:.1f} s vs {plain['wall_s']:.1f} s",
        )
    )

    for finetuning, label, goal in (("lora", "LoRA", "<= 1.10"), ("full", "full", "-")):
        base = load([f"model.finetuning={finetuning}"], out)
        dp = load([f"model.finetuning={finetuning}", "dp_sgd.enabled=true"], out)
        plain_step, dp_step = step_time(base, "plain"), step_time(dp, "dp")
        plain_pass, dp_pass = step_time(base, "plain-one-pass"), step_time(dp, "dp-one-pass")
        rows.append(
            (
                f"{label} DP-SGD step / {label} step (batch 8, one thread, as trained)",
                dp_step.wall_s / plain_step.wall_s,
                dp_step.cpu_s / plain_step.cpu_s,
                goal,
                f"CPU {dp_step.cpu_s * 1e3:.0f} ms vs {plain_step.cpu_s * 1e3:.0f} ms per step",
            )
        )
        rows.append(
            (
                "... both in one padded pass per batch (no length groups)",
                dp_pass.wall_s / plain_pass.wall_s,
                dp_pass.cpu_s / plain_pass.cpu_s,
                "-",
                f"CPU {dp_pass.cpu_s * 1e3:.0f} ms vs {plain_pass.cpu_s * 1e3:.0f} ms per step",
            )
        )
        rows.append(
            (
                f"{label} step in length groups / in one padded pass (plain; DP-SGD)",
                plain_step.wall_s / plain_pass.wall_s,
                plain_step.cpu_s / plain_pass.cpu_s,
                "< 1",
                f"CPU {plain_step.cpu_s * 1e3:.0f} vs {plain_pass.cpu_s * 1e3:.0f} ms; DP-SGD "
                f"{dp_step.cpu_s * 1e3:.0f} vs {dp_pass.cpu_s * 1e3:.0f} ms "
                f"({dp_step.cpu_s / dp_pass.cpu_s:.2f})",
            )
        )

    rows.extend(measure_dp_modes(out))

    secagg_size = [
        *SIMULATION,
        "model.finetuning=lora",
        "federation.num_clients=10",
        "federation.rounds=3",
        "training.local_steps=2",
    ]
    plain10 = run_worker("federated", [*secagg_size, "name=plain10"], out)
    secure10 = run_worker("federated", [*secagg_size, "secagg.enabled=true", "name=secagg10"], out)
    rows.append(
        (
            "SecAgg+ round / plain round (10 clients, LoRA; CPU: whole runs)",
            secure10["fit_stage_s"] / plain10["fit_stage_s"],
            secure10["cpu_s"] / plain10["cpu_s"],
            "<= 1.3",
            f"fit stage {secure10['fit_stage_s']:.2f} s vs {plain10['fit_stage_s']:.2f} s; "
            f"CPU {secure10['cpu_s']:.1f} s vs {plain10['cpu_s']:.1f} s",
        )
    )

    batched, single = extraction_times(load([], out))
    rows.append(
        (
            "batched extraction / one-prompt generate (canaries per second, one thread)",
            single.wall_s / batched.wall_s,
            single.cpu_s / batched.cpu_s,
            ">= 10",
            f"wall {1 / batched.wall_s:.1f}/s vs {1 / single.wall_s:.2f}/s",
        )
    )

    scale = [*SIMULATION, "training.local_steps=2", "federation.rounds=3"]
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
            math.nan,
            "<= 1.5",
            f"{many['peak_rss_mb']:.0f} MB vs {few['peak_rss_mb']:.0f} MB (whole process tree)",
        )
    )
    rows.append(
        (
            "100 clients sampling 0.1 / 10 clients sampling 1.0 (fit stage; CPU: whole runs)",
            many["fit_stage_s"] / ten["fit_stage_s"],
            many["cpu_s"] / ten["cpu_s"],
            "~ 1",
            f"fit stage {many['fit_stage_s']:.2f} s vs {ten['fit_stage_s']:.2f} s; "
            f"CPU {many['cpu_s']:.1f} s vs {ten['cpu_s']:.1f} s",
        )
    )
    rows.extend(measure_clients(out)[0])
    likelihood, details = measure_likelihood()
    rows.extend(likelihood)
    return rows, details


DP_MODE_GOALS = {"hooks": "-", "ghost": "-", "bookkeeping": "<= 1.10"}


def measure_dp_modes(
    out: str | None = None, modes: tuple[str, ...] = ("ghost", "bookkeeping")
) -> list[Row]:
    """LoRA DP-SGD step / LoRA step for each of `modes` (`dp_sgd.grad_sample_mode`), each
    side by side with its own plain step (as trained: length groups, one thread). The whole
    bench measures hooks mode in its own rows above."""
    with contextlib.ExitStack() as stack:
        if out is None:
            out = stack.enter_context(tempfile.TemporaryDirectory(prefix="fedmem-bench-"))
        lora = ["model.finetuning=lora"]
        base = load(lora, out)
        rows: list[Row] = []
        for mode in modes:
            dp = load([*lora, "dp_sgd.enabled=true", f"dp_sgd.grad_sample_mode={mode}"], out)
            plain_step, dp_step = step_time(base, "plain"), step_time(dp, "dp")
            rows.append(
                (
                    f"LoRA DP-SGD step, {mode} clipping / LoRA step (batch 8, one thread, "
                    "as trained)",
                    dp_step.wall_s / plain_step.wall_s,
                    dp_step.cpu_s / plain_step.cpu_s,
                    DP_MODE_GOALS[mode],
                    f"CPU {dp_step.cpu_s * 1e3:.0f} ms vs {plain_step.cpu_s * 1e3:.0f} ms "
                    "per step",
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
        f"flwr {flwr.__version__}, one torch thread per process"
    )


def table(rows: list[Row], seconds: float, details: str = "", only: str = "") -> str:
    lines = [
        f"### {machine_facts()}",
        "",
        f"Only the {only} rows (`--only {only}`): {seconds:.0f} s."
        if only
        else f"Whole bench: {seconds:.0f} s.",
        "",
        "| ratio | wall | CPU time | goal | sides |",
        "|---|---|---|---|---|",
    ]
    for name, wall, cpu, goal, detail in rows:
        cpu_text = "-" if math.isnan(cpu) else f"{cpu:.2f}"
        lines.append(f"| {name} | {wall:.2f} | {cpu_text} | {goal} | {detail} |")
    if details:
        lines += ["", details.rstrip("\n")]
    return "\n".join(lines) + "\n"


def append_results(text: str) -> None:
    append_to_section(RESULTS, HEADING, SECTION_INTRO, text)


CLIENT_ROWS = 30  # training rows per client on both sides of the clients row


def clients_sides(clients: int) -> list[str]:
    """A federation of `clients` clients with about CLIENT_ROWS training rows each, 10
    sampled per round, and the same audit sizes whatever its size: one canary per replica
    count (15 copies spread over the clients) and 30 held-out samples scored."""
    heldout = 0.1
    return [
        *SIMULATION,
        "training.local_steps=2",
        "federation.rounds=2",
        f"federation.num_clients={clients}",
        f"federation.fraction_fit={10 / clients}",
        f"data.num_samples={round(clients * CLIENT_ROWS / (1 - heldout))}",
        f"data.heldout_fraction={heldout}",
        "data.heldout_sample=30",
        "canaries.per_count=1",
        f"name=clients{clients}",
    ]


def measure_clients(out: str | None = None) -> tuple[list[Row], str]:
    """1,000 clients sampling 10 per round against 10 clients all sampled, the same rows per
    client: round time (server side, training + audits) and peak RSS of the process tree."""
    with contextlib.ExitStack() as stack:
        out = out or stack.enter_context(tempfile.TemporaryDirectory(prefix="fedmem-bench-"))
        many = run_worker("federated", clients_sides(1000), out)
        ten = run_worker("federated", clients_sides(10), out)
    rows: list[Row] = []
    for rnd, label in ((2, "round 2"), (1, "round 1 (actors start)"), (0, "round 0 (audit)")):
        rows.append(
            (
                f"{label}: 1,000 clients sampling 10 / 10 clients (~{CLIENT_ROWS} rows each)",
                many["round_s"][rnd] / ten["round_s"][rnd],
                math.nan,
                "<= 1.2" if rnd == 2 else "-",
                f"{many['round_s'][rnd]:.2f} s vs {ten['round_s'][rnd]:.2f} s",
            )
        )
    rows.append(
        (
            "peak RSS of the process tree, 1,000 clients sampling 10 / 10 clients",
            many["peak_rss_mb"] / ten["peak_rss_mb"],
            math.nan,
            "<= 1.2",
            f"{many['peak_rss_mb']:.0f} MB vs {ten['peak_rss_mb']:.0f} MB",
        )
    )
    rows.append(
        (
            "whole run, 1,000 clients sampling 10 / 10 clients (Ray start-up included)",
            many["wall_s"] / ten["wall_s"],
            many["cpu_s"] / ten["cpu_s"],
            "-",
            f"wall {many['wall_s']:.1f} s vs {ten['wall_s']:.1f} s; "
            f"CPU {many['cpu_s']:.1f} s vs {ten['cpu_s']:.1f} s",
        )
    )
    return rows, ""


# Rows that `--only NAME` runs alone.
ONLY = {
    "likelihood": measure_likelihood,
    "dp-modes": lambda: (measure_dp_modes(modes=tuple(DP_MODE_GOALS)), ""),
    "extraction": measure_extraction,
    "clients": measure_clients,
}

SECTION_INTRO = (
    "Appended by `make bench` (benchmarks/speed_ratios.py; sizes in its docstring). Each "
    "ratio's two sides are measured back to back in one run."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=sorted(WORKERS))
    parser.add_argument(
        "--likelihood-worker", nargs=3, metavar=("VARIANT", "ROWS", "TOKENS"),
        help="(internal) one likelihood pass in this process",
    )
    parser.add_argument(
        "--only", choices=sorted(ONLY), help="run these rows alone"
    )
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--no-append", action="store_true", help="print only")
    parser.add_argument(
        "--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
        help="config override under every row's own (the table is then not the standard one)",
    )
    args = parser.parse_args(argv)
    EXTRA[:] = args.extra
    if args.worker:
        config = load(args.overrides, os.environ["BENCH_OUT"])
        print(json.dumps(WORKERS[args.worker](config)))
        return 0
    if args.likelihood_worker:
        variant, rows, tokens = args.likelihood_worker
        print(json.dumps(worker_likelihood(variant, int(rows), int(tokens))))
        return 0
    start = time.perf_counter()
    if args.only:
        rows, details = ONLY[args.only]()
    else:
        with tempfile.TemporaryDirectory(prefix="fedmem-bench-") as out:
            load([], out)  # validates the quickstart before anything runs
            rows, details = measure(out)
    text = table(rows, time.perf_counter() - start, details, args.only or "")
    print(text)
    if not args.no_append:
        append_results(text)
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
