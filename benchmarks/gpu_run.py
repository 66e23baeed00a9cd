"""`benchmarks/gpu.sh`: the GPU run, prepared (at most 8 minutes on one GPU).

Rows, each from fresh subprocesses (`--worker`), written under "GPU run (benchmarks/gpu.sh)"
in benchmarks/RESULTS.md (`--results PATH` elsewhere, `--no-append` nowhere) and printed:

- Llama-3.2-1B's shape: a Llama built from `LlamaConfig` at Llama-3.2-1B's dimensions
  (hidden 2,048, 16 layers, 32 heads, 8 KV heads, intermediate 8,192, vocabulary 128,256,
  tied embeddings), random weights, nothing downloaded. Its tokenizer is the tiny Llama's
  byte-level BPE (2,048 tokens): ids use the embedding's first rows only, the compute (the
  128,256-wide head included) is the real model's. LoRA, 3 clients x 2 rounds, every audit
  on (the preset's defaults), three clients sharing one GPU (`federation.client_gpus`
  0.33), bf16. Its tokens per second are set against a plain PyTorch loop doing the same
  steps: the same model and LoRA adapter, the same batches (the same rows, seeds and
  shuffles as `fedmem.training.train_local`), AdamW, bf16, one padded pass per batch, one
  client after another, no Flower, no aggregation, no audits.
- SmolLM2-135M full vs LoRA, the evidence preset: configs/smollm2-evidence-full.toml (full,
  lr 1e-4) and configs/smollm2-evidence.toml (LoRA, lr 1e-3), bf16, cuda; the notes give
  the final exact extraction of the highest replica group (with its 95 % Clopper-Pearson
  interval), the twins' and the held-out perplexity.

Training tokens are the real (non-pad) tokens of the batches the clients train on. fedmem's
tokens per second divide the tokens of rounds 2.. by the server-measured fit stages of those
rounds (round 1 pays the actors' start and the model load); the plain loop's divide the
same tokens by its timed fits of the same rounds. With one round, every round counts. Peak
GPU memory is `torch.cuda.max_memory_allocated` in each client's process during its fit
(`peak_gpu_mib` in the fit metrics), the maximum over rounds per client.

`--tiny` shrinks everything (tiny dimensions, 2 clients x 1 round, 2 steps; the SmolLM2
rows take the tiny random Llama) and `--device cpu` runs on CPU in fp32, peak memory 'n/a
(cpu)': the test suite runs both.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results_file import append_to_section

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
HEADING = "## GPU run (benchmarks/gpu.sh)"
SMOLLM2_PRESET = REPO / "configs" / "smollm2-audit.toml"
# Part (a): SmolLM2-135M full vs LoRA, one preset file each (the same run but for them).
SMOLLM2_EVIDENCE = {
    "full": REPO / "configs" / "smollm2-evidence-full.toml",
    "lora": REPO / "configs" / "smollm2-evidence.toml",
}
BUDGET_S = 8 * 60
RATIO_GOAL = 0.9

LLAMA_1B_SHAPE = {
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 8192,
    "vocab_size": 128_256,
    "tie_word_embeddings": True,
    "max_position_embeddings": 131_072,
    "rope_theta": 500_000.0,
}
# The same architecture, shrunk for CPU (grouped KV heads kept).
TINY_SHAPE = {
    **LLAMA_1B_SHAPE,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 4096,
}
# The 1B-shape row's data and steps over the smollm2-audit preset's (60 rows, batch 4, 4 steps).
LLAMA_1B_TRAINING = [
    "data.num_samples=240", "training.batch_size=16", "training.local_steps=16",
    "training.max_seq_len=128",
]


@dataclasses.dataclass(frozen=True)
class Mode:
    device: str  # "cuda" or "cpu"
    tiny: bool

    def placement(self) -> list[str]:
        if self.device == "cuda":
            return ["model.device=cuda", "model.dtype=bfloat16", "federation.client_gpus=0.33"]
        return ["model.device=cpu", "model.dtype=float32", "federation.client_gpus=0"]

    def size(self, clients: int, rounds: int) -> list[str]:
        if self.tiny:
            return [
                "federation.num_clients=2", "federation.rounds=1", "training.local_steps=2",
                "data.num_samples=40", "canaries.per_count=1", "federation.client_cpus=1",
            ]
        return [f"federation.num_clients={clients}", f"federation.rounds={rounds}"]

    def llama_batches(self) -> list[str]:
        """Batches big enough that a step of the 1B shape is GPU work, not overhead."""
        if self.tiny:
            return []
        return LLAMA_1B_TRAINING


@dataclasses.dataclass
class Row:
    name: str
    fedmem_tps: float | None = None
    plain_tps: float | None = None
    peak_mib: str = "-"
    wall_s: float | None = None
    note: str = ""

    def ratio(self) -> float | None:
        if self.fedmem_tps is None or not self.plain_tps:
            return None
        return self.fedmem_tps / self.plain_tps


# --------------------------------------------------------------------------- the model


def write_llama_folder(shape: dict, out: Path, device: str) -> Path:
    """A Llama of `shape` with random weights (seed 0, bf16 on cuda), saved with the tiny
    Llama's tokenizer into `out`: a local folder `model.name` can name."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from fedmem.config import ModelConfig
    from fedmem.models.loading import hf_logging  # noqa: F401  (no progress bars)
    from fedmem.models.tiny_llama import ensure_tiny_base

    tokenizer_dir = ensure_tiny_base(ModelConfig())
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out / name)
    ids = json.loads((tokenizer_dir / "config.json").read_text())
    special = {k: ids.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**shape, **special, dtype=dtype)).to(dtype)
    model.save_pretrained(out)
    del model
    if device == "cuda":  # leave the GPU to the workers
        torch.cuda.empty_cache()
    return out


# --------------------------------------------------------------------------- workers


def fit_batches(config, client: int, server_round: int) -> list:
    """The batches `train_local` draws for this client's fit, as plain padded batches."""
    import random

    import torch

    from clients.app import client_rows, training_seed
    from fedmem.mitigations import registry
    from fedmem.training import collate, planned_steps, shuffled_index_batches

    rows, prompts = client_rows(config, client)
    seed = training_seed(config, server_round, client)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    steps, batches = planned_steps(config.training, len(rows)), []
    pad_id, mask = pad_token(config), registry.label_mask(config)
    while len(batches) < steps:
        for idx in shuffled_index_batches(len(rows), config.training.batch_size, rng):
            picked = None if prompts is None else [prompts[i] for i in idx]
            batches.append(collate([rows[i] for i in idx], pad_id, mask, picked))
            if len(batches) == steps:
                break
    return batches


def pad_token(config) -> int:
    from fedmem.models.loading import load_tokenizer

    return int(load_tokenizer(config).pad_token_id)


def round_tokens(config) -> dict[int, int]:
    """Real (non-pad) training tokens per round, over every client."""
    return {
        r: sum(
            int(b.attention_mask.sum())
            for c in range(config.federation.num_clients)
            for b in fit_batches(config, c, r)
        )
        for r in range(1, config.federation.rounds + 1)
    }


def worker_fl(config) -> dict:
    """One `fedmem run`: fit-stage seconds and tokens per round, peak GPU MiB per client."""
    import logging

    from fedmem.drivers.simulation import run_federated
    from fedmem.files import read_jsonl

    logging.getLogger("flwr").setLevel(logging.ERROR)
    start = time.perf_counter()
    run_federated(config)
    wall = time.perf_counter() - start
    rows = read_jsonl(config.run_dir / "metrics.jsonl")[1:]
    peaks: dict[str, float] = {}
    for row in rows:
        for client, facts in row["clients"].items():
            if "peak_gpu_mib" in facts:
                peaks[client] = max(peaks.get(client, 0.0), float(facts["peak_gpu_mib"]))
    last = rows[-1]
    return {
        "wall_s": wall,
        "fit_s": {str(r["round"]): r["fit_stage"]["seconds"] for r in rows},
        "tokens": {str(k): v for k, v in round_tokens(config).items()},
        "clients": [len(r["clients"]) for r in rows],
        "peak_mib": peaks,
        "exposure_mean": (last.get("exposure") or {}).get("injected", {}).get("mean"),
        "exact_by_replicas": (last.get("extraction") or {}).get("by_replicas", {}),
        "heldout_perplexity": last.get("heldout_perplexity"),
    }


def worker_plain(config) -> dict:
    """The same fits as the FL run in a plain loop: seconds and tokens per round."""
    from fedmem.models.loading import build_model

    model = build_model(config, seed=config.seed)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    seconds: dict[str, float] = {}
    tokens: dict[str, int] = {}
    for r in range(1, config.federation.rounds + 1):
        for client in range(config.federation.num_clients):
            batches = [b.to(device) for b in fit_batches(config, client, r)]
            spent = plain_fit(model, params, batches, config.training)
            seconds[str(r)] = seconds.get(str(r), 0.0) + spent
            tokens[str(r)] = tokens.get(str(r), 0) + sum(
                int(b.attention_mask.sum()) for b in batches
            )
    return {"fit_s": seconds, "tokens": tokens, "device": str(device)}


def plain_fit(model, params: list, batches: list, training) -> float:
    """Seconds of one fit: AdamW, one padded pass per batch, the same clip."""
    import torch

    sync = torch.cuda.synchronize if params[0].is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    optimizer = torch.optim.AdamW(params, lr=training.lr, weight_decay=training.weight_decay)
    model.train()
    for b in batches:
        out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels)
        out.loss.backward()
        if training.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, training.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync()
    model.eval()
    return time.perf_counter() - start


WORKERS = {"fl": worker_fl, "plain": worker_plain}


def run_worker(kind: str, preset: Path, overrides: list[str], timeout: float) -> dict:
    """A worker in a fresh interpreter; {"error": ...} when it fails or runs out of time."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_run", "--worker", kind, str(preset), *overrides]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_memory_monitor_refresh_ms": "0"}
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=max(1.0, timeout)
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:200]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- rows


def counted_rounds(fit_s: dict[str, float]) -> list[str]:
    """Rounds whose time counts: 2.. (round 1 pays start-up), or all with one round."""
    later = [r for r in fit_s if int(r) >= 2]
    return later or list(fit_s)


def tokens_per_second(result: dict) -> float:
    rounds = counted_rounds(result["fit_s"])
    return sum(result["tokens"][r] for r in rounds) / sum(result["fit_s"][r] for r in rounds)


def peak_text(result: dict, device: str) -> str:
    if device != "cuda":
        return "n/a (cpu)"
    peaks = result.get("peak_mib") or {}
    return ", ".join(f"c{c} {v / 1024:.1f} GiB" for c, v in sorted(peaks.items())) or "missing"


def fl_row(name: str, fl: dict, plain: dict | None, device: str) -> Row:
    if "error" in fl:
        return Row(name, note=f"fedmem run failed: {fl['error']}")
    row = Row(name, tokens_per_second(fl), None, peak_text(fl, device), fl["wall_s"])
    row.note = f"clients per round {fl['clients']}; " + final_audit_text(fl)
    if plain is not None:
        if "error" in plain:
            row.note += f"; plain loop failed: {plain['error']}"
        else:
            row.plain_tps = tokens_per_second(plain)
            if plain["tokens"] != fl["tokens"]:
                row.note += f"; tokens differ: {fl['tokens']} vs {plain['tokens']}"
    return row


def final_audit_text(fl: dict) -> str:
    """The last round's headline: exact extraction of the highest replica group and of the
    twins with their Clopper-Pearson intervals, and held-out perplexity, where the run
    audited them; else the mean exposure of the injected exposure canaries."""
    from fedmem.audits.intervals import formatted

    groups = fl.get("exact_by_replicas") or {}
    if not groups:
        exposure = fl["exposure_mean"]
        bits = "-" if exposure is None else f"{exposure:.2f} bits"
        return f"final exposure (mean, injected) {bits}"
    top = max(groups, key=int)
    parts = [
        f"exact extraction {top}x {formatted(groups[top], 'exact_rate', '%')} "
        f"(n {groups[top].get('n')})"
    ]
    if "0" in groups:
        parts.append(f"twins {formatted(groups['0'], 'exact_rate', '%')}")
    ppl = fl.get("heldout_perplexity")
    parts.append(f"held-out perplexity {'-' if ppl is None else f'{ppl:.2f}'}")
    return "final " + ", ".join(parts)


def llama_row(mode: Mode, folder: Path, work: Path, deadline: float) -> Row:
    preset = SMOLLM2_PRESET
    overrides = [
        f"model.name={json.dumps(str(folder))}", "model.finetuning=lora", "training.lr=1e-3",
        *mode.placement(), *mode.size(clients=3, rounds=2), *mode.llama_batches(),
        f"output.dir={json.dumps(str(work / 'runs'))}",
    ]
    fl = run_worker("fl", preset, [*overrides, "name=llama-fl"], deadline - time.time())
    plain = run_worker("plain", preset, [*overrides, "name=llama-plain"], deadline - time.time())
    label = "tiny random Llama" if mode.tiny else "Llama-3.2-1B shape, random weights,"
    clients = 2 if mode.tiny else 3
    name = f"{label} LoRA, {clients} clients sharing one {mode.device} device"
    return fl_row(name, fl, plain, mode.device)


def smollm2_rows(mode: Mode, tiny_model: Path, work: Path, deadline: float) -> list[Row]:
    """Full and LoRA on the smollm2-evidence presets; `--tiny` puts the tiny random Llama in
    SmolLM2's place at the tiny size (the cached tiny-llama base is keyed by model.device and
    model.dtype, so the tiny mode's placement would rebuild it: minutes on 2 cores)."""
    from fedmem.config import load_config

    rows = []
    for finetuning, preset in SMOLLM2_EVIDENCE.items():
        overrides = [
            *mode.placement(), f"output.dir={json.dumps(str(work / 'runs'))}",
            f"name=smollm2-{finetuning}",
        ]
        if mode.tiny:
            overrides += [f"model.name={json.dumps(str(tiny_model))}", *mode.size(2, 3)]
        lr = load_config(preset).training.lr
        fl = run_worker("fl", preset, overrides, deadline - time.time())
        model = "tiny random Llama" if mode.tiny else "SmolLM2-135M"
        name = f"{model} {finetuning} (lr {lr:g}), {preset.stem}"
        rows.append(fl_row(name, fl, None, mode.device))
    return rows


# --------------------------------------------------------------------------- the table


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[Row], mode: Mode, seconds: float) -> str:
    lines = [
        f"### {machine_facts(mode)}",
        "",
        f"Whole script: {seconds:.0f} s{' (--tiny)' if mode.tiny else ''}.",
        "",
        f"| row | fedmem tokens/s | plain loop tokens/s | fedmem / plain (goal >= {RATIO_GOAL}) "
        "| peak memory per client | wall s | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {fmt(r.fedmem_tps, ',.0f')} | {fmt(r.plain_tps, ',.0f')} "
            f"| {fmt(r.ratio(), '.2f')} | {r.peak_mib} | {fmt(r.wall_s, '.0f')} | {r.note} |"
        )
    return "\n".join(lines) + "\n"


def machine_facts(mode: Mode) -> str:
    import torch

    when = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
    if mode.device == "cuda":
        device = torch.cuda.get_device_name(0)
    else:
        device = f"cpu ({os.cpu_count()} CPUs, {platform.machine()})"
    return f"{when}, {device}: Python {platform.python_version()}, torch {torch.__version__}"


SECTION_INTRO = (
    "Written by `benchmarks/gpu.sh` (benchmarks/gpu_run.py; sizes and how tokens/s and peak "
    "memory are measured in its docstring). The figures appear below when a GPU session runs "
    "it; none had when this section was written (2026-11-30, prepared on a machine without a "
    "GPU)."
)


def append_results(text: str, results: Path) -> None:
    append_to_section(results, HEADING, SECTION_INTRO, text)


def measure(mode: Mode) -> list[Row]:
    deadline = time.time() + BUDGET_S
    with tempfile.TemporaryDirectory(prefix="fedmem-gpu-") as tmp:
        work = Path(tmp)
        shape = TINY_SHAPE if mode.tiny else LLAMA_1B_SHAPE
        folder = write_llama_folder(shape, work / "llama-shape", mode.device)
        rows = [llama_row(mode, folder, work, deadline)]
        rows += smollm2_rows(mode, folder, work, deadline)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("worker_args", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (tests, CPU)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="file to append to")
    parser.add_argument("--no-append", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.worker:
        from fedmem.config import load_config

        config = load_config(args.worker_args[0], args.worker_args[1:])
        print(json.dumps(WORKERS[args.worker](config)))
        return 0
    start = time.perf_counter()
    mode = Mode(args.device, args.tiny)
    text = table(measure(mode), mode, time.perf_counter() - start)
    print(text)
    if not args.no_append:
        append_results(text, args.results)
        print(f"written to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
