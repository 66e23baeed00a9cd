"""The run folder: what a run leaves behind, always written atomically.

runs/<name>/
  config.json       the resolved configuration
  canaries.jsonl    every canary, with its `injected` flag, replica count and clients
  metrics.jsonl     one line per round (round 0 = before fine-tuning), with the weight-noise
                    sigma the audited model carried
  extraction.jsonl  one line per round and canary
  summary.json      the final round and run facts, written last
  checkpoint/       the final trainable state (adapter or full weights) as safetensors
  checkpoints/round-NNN/
    trainable.safetensors  the global trainable state after round NNN
    resume.json            what else resuming needs (accountants, strategy state), written
                           last: a round whose resume.json exists is complete
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedmem.audit import audit_model
from fedmem.canaries import to_jsonl_rows
from fedmem.config import Config, ConfigError, build_config, to_dict
from fedmem.dataset import build_federated_data
from fedmem.mitigations.weight_noise import audit_sigma, noise_seed, noised_weights
from fedmem.models import get_trainable_state, set_trainable_state, trainable_names

CHECKPOINTS = "checkpoints"
RESUME_FILE = "resume.json"
TRAINABLE_FILE = "trainable.safetensors"
# Row fields that measure the machine, not the run: wall-clock times, and the fit stage's
# wire bytes, which include Flower's random run and node ids. Everything else in a
# metrics row is a function of the config (see README, Reliability).
MEASURED_FIELDS = ("elapsed_s", "fit_stage")
# Keys that say where a run folder is, not what the run is.
LOCATION_KEYS = ("name", "output")


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def save_checkpoint(folder: Path, model: torch.nn.Module, meta: dict) -> None:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = dict(zip(trainable_names(model), get_trainable_state(model), strict=True))
    tmp = folder / ".trainable.safetensors.tmp"
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata={})
    os.replace(tmp, folder / TRAINABLE_FILE)
    atomic_write_json(folder / "meta.json", meta)


def load_checkpoint(folder: Path, model: torch.nn.Module) -> None:
    """Set the model's trainable state from `folder`/trainable.safetensors."""
    from safetensors.numpy import load_file

    tensors = load_file(str(folder / TRAINABLE_FILE))
    names = trainable_names(model)
    if sorted(tensors) != sorted(names):
        raise ConfigError(f"{folder / TRAINABLE_FILE}: does not hold this model's trainable state")
    set_trainable_state(model, [tensors[n] for n in names])


def round_checkpoint(run_dir: Path, server_round: int) -> Path:
    return run_dir / CHECKPOINTS / f"round-{server_round:03d}"


def without_measurements(row: dict) -> dict:
    """A metrics row without `MEASURED_FIELDS`: equal across reruns of one config."""
    return {k: v for k, v in row.items() if k not in MEASURED_FIELDS}


def config_differences(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ, the run folder's name and location aside."""
    flat_a, flat_b = comparable_config(a), comparable_config(b)
    return [k for k in flat_a if flat_a[k] != flat_b.get(k)]


def comparable_config(config: Config) -> dict:
    """The config as flat dotted keys, without the keys that only say where its run folder
    is (`name`, `output.*`)."""
    out: dict = {}

    def walk(tree: dict, prefix: str) -> None:
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[prefix + key] = value

    walk({k: v for k, v in to_dict(config).items() if k not in LOCATION_KEYS}, "")
    return out


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


class RunRecorder:
    """Audits the global model each round and keeps the run folder up to date."""

    def __init__(self, config: Config, on_round=None) -> None:
        self.config = config
        self.folder = config.run_dir
        self.rows: list[dict] = []
        self.canary_rows: list[dict] = []
        self.started = time.perf_counter()
        self.on_round = on_round  # called with each metrics row (progress display)

    def start(self, resume: bool = False) -> ResumePoint | None:
        """Prepare the run folder. Fresh: clear what an earlier run of the same name left.
        `resume`: keep what the last complete round left (rows after it are dropped) and
        return where to continue; None when not even round 0 was complete (start afresh)."""
        if resume:
            point = self._resume()
            if point is not None:
                return point
        data = build_federated_data(self.config)
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in ("summary.json", "metrics.jsonl", "extraction.jsonl"):
            (self.folder / stale).unlink(missing_ok=True)
        shutil.rmtree(self.folder / CHECKPOINTS, ignore_errors=True)
        atomic_write_json(self.folder / "config.json", to_dict(self.config))
        write_jsonl(self.folder / "canaries.jsonl", to_jsonl_rows(data.canaries))
        return None

    def _resume(self) -> ResumePoint | None:
        saved = self.folder / "config.json"
        if not saved.is_file():
            raise ConfigError(f"{self.folder}: no config.json, not a fedmem run folder")
        differs = config_differences(build_config(json.loads(saved.read_text())), self.config)
        if differs:
            raise ConfigError(f"{saved}: the run was made with another config ({differs[0]})")
        done = last_complete_round(self.folder)
        if done is None:
            return None
        _remove_temporary_files(self.folder)
        for folder in (self.folder / CHECKPOINTS).glob("round-*"):
            suffix = folder.name.removeprefix("round-")
            if not suffix.isdigit() or int(suffix) > done:
                shutil.rmtree(folder)
        self.rows = [r for r in read_jsonl(self.folder / "metrics.jsonl") if r["round"] <= done]
        if [r["round"] for r in self.rows] != list(range(done + 1)):
            raise ConfigError(
                f"{self.folder / 'metrics.jsonl'}: rounds 0..{done} are not all there"
            )
        extraction = read_jsonl(self.folder / "extraction.jsonl")
        self.canary_rows = [r for r in extraction if r["round"] <= done]
        write_jsonl(self.folder / "metrics.jsonl", self.rows)
        write_jsonl(self.folder / "extraction.jsonl", self.canary_rows)
        (self.folder / "summary.json").unlink(missing_ok=True)
        folder = round_checkpoint(self.folder, done)
        state = json.loads((folder / RESUME_FILE).read_text())
        self.started = time.perf_counter() - float(state.get("elapsed_s", 0.0))
        return ResumePoint(round=done, folder=folder, state=state)

    def record(
        self,
        server_round: int,
        model: torch.nn.Module,
        clients: dict | None = None,
        fit_stage: dict | None = None,
        client_dp: dict | None = None,
        outcome: dict | None = None,
        resume_state: dict | None = None,
    ) -> dict:
        """Audit `model` as the global model after `server_round`, then checkpoint it.

        `clients`: the round's per-client training facts keyed by client index, as the
        server received them (under SecAgg+ these metrics are not masked, the update is);
        `fit_stage`: the fit stage's wall time and message bytes measured at the server;
        `client_dp`: the clipping norm and noise std the DP wrapper used; `outcome`: whether
        the round updated the global model, the clients that failed, why it was abandoned;
        `resume_state`: what, besides the model, a resumed run needs (JSON). With weight
        noise on, the audit sees a noised model and `model` is left exactly as it was."""
        sigma = audit_sigma(self.config.weight_noise, server_round)
        with noised_weights(model, sigma, noise_seed(self.config.seed, server_round)):
            audit = audit_model(self.config, model)
        clients = clients or {}
        row = {
            "round": server_round,
            "elapsed_s": round(time.perf_counter() - self.started, 3),
            "secure_aggregation": self.config.secagg.enabled,
            "clients": {str(k): clients[k] for k in sorted(clients)},
            "bytes_sent": sum(c.get("bytes_sent", 0) for c in clients.values()),
            "weight_noise_sigma": sigma,
            **({"fit_stage": fit_stage} if fit_stage else {}),
            **({"client_dp": client_dp} if client_dp else {}),
            **(outcome or {}),
            **audit.metrics,
        }
        if self.config.dp_sgd.enabled:
            row["dp_epsilon_max"] = self._epsilon_max(clients)
        self.rows.append(row)
        self.canary_rows.extend({"round": server_round, **r} for r in audit.canary_results)
        write_jsonl(self.folder / "metrics.jsonl", self.rows)
        write_jsonl(self.folder / "extraction.jsonl", self.canary_rows)
        folder = round_checkpoint(self.folder, server_round)
        meta = {"round": server_round, "finetuning": self.config.model.finetuning}
        save_checkpoint(folder, model, meta)
        # Written last: its presence marks the round complete.
        state = {"round": server_round, "elapsed_s": row["elapsed_s"], **(resume_state or {})}
        atomic_write_json(folder / RESUME_FILE, state)
        if self.on_round:
            self.on_round(row)
        return row

    def _epsilon_max(self, clients: dict) -> float:
        """Largest epsilon any client has spent so far: a client's epsilon only grows, and
        a client sampled out of this round keeps the one it reported before."""
        before = self.rows[-1].get("dp_epsilon_max", 0.0) if self.rows else 0.0
        return max([before, *(c["dp_epsilon"] for c in clients.values() if "dp_epsilon" in c)])

    def finish(self, model: torch.nn.Module) -> dict:
        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        save_checkpoint(
            self.folder / "checkpoint",
            model,
            {"round": self.rows[-1]["round"], "finetuning": self.config.model.finetuning},
        )
        summary = {
            "name": self.config.name,
            "mode": self.config.mode,
            "model": self.config.model.name,
            "finetuning": self.config.model.finetuning,
            "parameters": params,
            "trainable_parameters": trainable,
            "rounds": self.rows[-1]["round"],
            "wall_time_s": round(time.perf_counter() - self.started, 3),
            "before": {k: self.rows[0][k] for k in ("heldout_loss", "extraction")},
            "final": self.rows[-1],
        }
        atomic_write_json(self.folder / "summary.json", summary)
        return summary


def _remove_temporary_files(run_dir: Path) -> None:
    """Temporary files a killed run left mid-write (atomic writes name them `.<name>.*`)."""
    for folder in [run_dir, *(run_dir / CHECKPOINTS).glob("round-*")]:
        for path in folder.glob(".*"):
            if path.is_file():
                path.unlink()
