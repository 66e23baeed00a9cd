#!/usr/bin/env bash
# The GPU run, prepared: at most 8 minutes on one GPU (written for an H200). Runs
# benchmarks/gpu_run.py (rows and sizes in its docstring): a Llama at Llama-3.2-1B's
# dimensions with LoRA, 3 clients sharing the GPU, tokens/s against a plain PyTorch loop and
# peak memory per client; then SmolLM2-135M full vs LoRA on the evidence preset
# (configs/smollm2-evidence.toml, configs/smollm2-evidence-full.toml), bf16.
# Appends its table under "GPU run (benchmarks/gpu.sh)" in benchmarks/RESULTS.md and prints
# it. Extra arguments go to gpu_run.py (e.g. --no-append, --results PATH).
#
#   benchmarks/gpu.sh                 # from the repository root or anywhere
#   PYTHON=/path/to/python benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# gpu_run.py stops its own workers at 8 minutes and writes what it has; this is the backstop.
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec timeout 540 "$PYTHON" -m benchmarks.gpu_run --device cuda "$@"
