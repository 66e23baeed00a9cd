"""The run folder: what a run leaves behind, always written atomically.

runs/<name>/
  config.json       the resolved configuration
  canaries.jsonl    every canary, with its `injected` flag, replica count and clients
  exposure_canaries.jsonl  the exposure canaries (digit secrets), same fields
  metrics.jsonl     one line per round (round 0 = before fine-tuning): the audit of the
                    global model (`vantage` = "global"), the weight-noise sigma it carried,
                    and `client_view` (the audits of each client's returned state, or why
                    there are none)
  extraction.jsonl  one line per round, vantage, decoding, prefix length and canary
  exposure.jsonl    one line per round, vantage and exposure canary
  membership.jsonl  one line per round, vantage and scored sample (every MIA score)
  roc/round-NNN.json  ROC points per vantage, MIA score and population, for plotting
  dp_audit_records.jsonl  the DP audit records and their inclusion bits (DP runs only)
  summary.json      the final round and run facts, written last
  checkpoint/       the final trainable state (adapter or full weights) as safetensors
  checkpoints/round-NNN/  the global state after round NNN (round-000 = before fine-tuning),
                    every `output.checkpoint_every` rounds and the last:
    trainable.safetensors  the trainable state (tensors named as in `trainable_names`)
    meta.json              {"round", "finetuning"}; `load_checkpoint` reads both back
    resume.json            what else resuming needs (accountants, strategy state), written
                           last: a round whose resume.json exists is complete
  audits/<name>/    a re-audit (`fedmem audit`): the same audit files for saved rounds

A finished run is also ingested into the results store next to its folder
(`<output.dir>/fedmem.sqlite`, fedmem.runs.store).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedmem.files import atomic_write_json
from fedmem.models.loading import get_trainable_state, set_trainable_state, trainable_names

CHECKPOINTS = "checkpoints"
RESUME_FILE = "resume.json"
TRAINABLE_FILE = "trainable.safetensors"
# Row fields that measure the machine, not the run: wall-clock times, and the fit stage's
# wire bytes, which include Flower's random run and node ids. Everything else in a
# metrics row is a function of the config (see README, Reliability).
MEASURED_FIELDS = ("elapsed_s", "fit_stage", "federated_attack_s")


def round_checkpoint_dir(run_dir: Path, server_round: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"round-{server_round:03d}"


def load_checkpoint(folder: Path, model: torch.nn.Module) -> dict:
    """Put a saved trainable state into `model` (built as the run built it); returns meta."""
    from safetensors.numpy import load_file

    tensors = load_file(str(Path(folder) / "trainable.safetensors"))
    names = trainable_names(model)
    if set(tensors) != set(names):
        raise ValueError(f"{folder}: saved tensors do not match the model's trainable state")
    set_trainable_state(model, [tensors[n] for n in names])
    return json.loads((Path(folder) / "meta.json").read_text())


def save_checkpoint(folder: Path, model: torch.nn.Module, meta: dict) -> None:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = dict(zip(trainable_names(model), get_trainable_state(model), strict=True))
    tmp = folder / ".trainable.safetensors.tmp"
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata={})
    os.replace(tmp, folder / TRAINABLE_FILE)
    atomic_write_json(folder / "meta.json", meta)


def without_measurements(row: dict) -> dict:
    """A metrics row without `MEASURED_FIELDS`: equal across reruns of one config."""
    return {k: v for k, v in row.items() if k not in MEASURED_FIELDS}


def last_complete_round(run_dir: Path) -> int | None:
    """The last round whose checkpoint is complete (its resume.json written), or None."""
    rounds = []
    for folder in (run_dir / CHECKPOINTS).glob("round-*"):
        suffix = folder.name.removeprefix("round-")
        if suffix.isdigit() and (folder / RESUME_FILE).is_file():
            rounds.append(int(suffix))
    return max(rounds, default=None)


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run picks up: after `round`, from `folder` (trainable state) and
    `state` (resume.json: elapsed time, accountant histories, strategy state)."""

    round: int
    folder: Path
    state: dict


def remove_temporary_files(run_dir: Path) -> None:
    """Temporary files a killed run left mid-write (atomic writes name them `.<name>.*`)."""
    for folder in [run_dir, *(run_dir / CHECKPOINTS).glob("round-*")]:
        for path in folder.glob(".*"):
            if path.is_file():
                path.unlink()
