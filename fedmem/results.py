"""The run folder: what a run leaves behind, always written atomically.

runs/<name>/
  config.json       the resolved configuration
  canaries.jsonl    every canary, with its `injected` flag, replica count and clients
  metrics.jsonl     one line per round (round 0 = before fine-tuning), with the weight-noise
                    sigma the audited model carried
  extraction.jsonl  one line per round and canary
  summary.json      the final round and run facts, written last
  checkpoint/       the final trainable state (adapter or full weights) as safetensors

A finished run is also ingested into the results store next to its folder
(`<output.dir>/fedmem.sqlite`, fedmem.store).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedmem.audit import audit_model
from fedmem.canaries import to_jsonl_rows
from fedmem.config import Config, to_dict
from fedmem.dataset import build_federated_data
from fedmem.mitigations.weight_noise import audit_sigma, noise_seed, noised_weights
from fedmem.models import get_trainable_state, trainable_names


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
    os.replace(tmp, folder / "trainable.safetensors")
    atomic_write_json(folder / "meta.json", meta)


class RunRecorder:
    """Audits the global model each round and keeps the run folder up to date."""

    def __init__(self, config: Config, on_round=None) -> None:
        self.config = config
        self.folder = config.run_dir
        self.rows: list[dict] = []
        self.canary_rows: list[dict] = []
        self.started = time.perf_counter()
        self.on_round = on_round  # called with each metrics row (progress display)

    def start(self) -> None:
        data = build_federated_data(self.config)
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in ("summary.json", "metrics.jsonl", "extraction.jsonl"):
            (self.folder / stale).unlink(missing_ok=True)
        atomic_write_json(self.folder / "config.json", to_dict(self.config))
        write_jsonl(self.folder / "canaries.jsonl", to_jsonl_rows(data.canaries))

    def record(
        self,
        server_round: int,
        model: torch.nn.Module,
        clients: dict | None = None,
        fit_stage: dict | None = None,
        client_dp: dict | None = None,
    ) -> dict:
        """Audit `model` as the global model after `server_round`.

        `clients`: the round's per-client training facts keyed by client index, as the
        server received them (under SecAgg+ these metrics are not masked, the update is);
        `fit_stage`: the fit stage's wall time and message bytes measured at the server;
        `client_dp`: the clipping norm and noise std the DP wrapper used. With weight noise
        on, the audit sees a noised model and `model` is left exactly as it was."""
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
            **audit.metrics,
        }
        if self.config.dp_sgd.enabled:
            row["dp_epsilon_max"] = self._epsilon_max(clients)
        self.rows.append(row)
        self.canary_rows.extend({"round": server_round, **r} for r in audit.canary_results)
        write_jsonl(self.folder / "metrics.jsonl", self.rows)
        write_jsonl(self.folder / "extraction.jsonl", self.canary_rows)
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
        from fedmem.store import ingest_run  # the store indexes finished runs only

        ingest_run(self.folder)  # into <output.dir>/fedmem.sqlite, one transaction
        return summary
