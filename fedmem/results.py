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
  summary.json      the final round and run facts, written last
  checkpoint/       the final trainable state (adapter or full weights) as safetensors
  checkpoints/round-NNN/  the global trainable state after round NNN (round-000 = before
                    fine-tuning), every `output.checkpoint_every` rounds and the last;
                    `trainable.safetensors` (tensors named as in `trainable_names`) and
                    `meta.json` ({"round", "finetuning"}); `load_checkpoint` reads one back
  audits/<name>/    a re-audit (`fedmem audit`): the same audit files for saved rounds
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedmem.audit import GLOBAL, audit_model, client_vantage
from fedmem.canaries import to_jsonl_rows
from fedmem.config import Config, to_dict
from fedmem.dataset import build_federated_data
from fedmem.mitigations.weight_noise import audit_sigma, noise_seed, noised_weights
from fedmem.models import get_trainable_state, set_trainable_state, trainable_names


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
    os.replace(tmp, folder / "trainable.safetensors")
    atomic_write_json(folder / "meta.json", meta)


AUDIT_FILES = ("extraction", "exposure", "membership")
BEFORE_KEYS = ("round", "heldout_loss", "utility", "extraction", "exposure", "membership")
SECAGG_NO_CLIENT_VIEW = (
    "SecAgg+: the server only ever unmasks the sum of the clients' updates, so no single "
    "client's update can be audited"
)


class RunRecorder:
    """Audits the global model each round and keeps the run folder up to date.

    `folder` defaults to the run folder; a re-audit writes into `audits/<name>/` instead,
    with `save_rounds = False` (it reads the saved rounds, never writes them)."""

    def __init__(
        self,
        config: Config,
        on_round=None,
        *,
        folder: Path | None = None,
        save_rounds: bool = True,
        client_view_note: str | None = None,
    ) -> None:
        self.config = config
        self.folder = Path(folder) if folder is not None else config.run_dir
        self.rows: list[dict] = []
        self.item_rows: dict[str, list[dict]] = {name: [] for name in AUDIT_FILES}
        self.client_views: dict[int, dict[str, dict]] = {}
        self.client_rocs: dict[int, dict[str, dict]] = {}
        self.started = time.perf_counter()
        self.on_round = on_round  # called with each metrics row (progress display)
        self.save_rounds = save_rounds
        self.client_view_note = client_view_note  # why no client view exists, if so

    def start(self) -> None:
        data = build_federated_data(self.config)
        self.folder.mkdir(parents=True, exist_ok=True)
        stale = ["summary.json", "metrics.jsonl", *(f"{n}.jsonl" for n in AUDIT_FILES)]
        for name in stale:
            (self.folder / name).unlink(missing_ok=True)
        atomic_write_json(self.folder / "config.json", to_dict(self.config))
        write_jsonl(self.folder / "canaries.jsonl", to_jsonl_rows(data.canaries))
        write_jsonl(
            self.folder / "exposure_canaries.jsonl", to_jsonl_rows(data.exposure_canaries)
        )

    def record_client_view(self, server_round: int, client: int, model: torch.nn.Module) -> dict:
        """Audit client `client`'s returned state in round `server_round` (the view of a
        server without secure aggregation), before averaging. Never weight-noised: the
        server holds the update as the client sent it."""
        vantage = client_vantage(client)
        audit = audit_model(self.config, model, vantage)
        self.client_views.setdefault(server_round, {})[str(client)] = audit.metrics
        self.client_rocs.setdefault(server_round, {})[vantage] = audit.roc
        for name, rows in audit.rows.items():
            self.item_rows[name].extend({"round": server_round, **r} for r in rows)
        return audit.metrics

    def _client_view(self, server_round: int) -> dict:
        if self.client_view_note:
            return {"status": "unavailable", "reason": self.client_view_note}
        if not self.config.attack.client_view:
            return {"status": "off"}
        if self.config.mode == "centralized":
            return {"status": "unavailable", "reason": "centralized training has no clients"}
        if self.config.secagg.enabled:
            return {"status": "unavailable", "reason": SECAGG_NO_CLIENT_VIEW}
        return {"status": "audited", "clients": self.client_views.pop(server_round, {})}

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
        if self.save_rounds and self._saves_round(server_round):
            save_checkpoint(
                round_checkpoint_dir(self.folder, server_round),
                model,
                {"round": server_round, "finetuning": self.config.model.finetuning},
            )
        sigma = audit_sigma(self.config.weight_noise, server_round)
        with noised_weights(model, sigma, noise_seed(self.config.seed, server_round)):
            audit = audit_model(self.config, model)  # vantage: GLOBAL
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
            "client_view": self._client_view(server_round),
        }
        if self.config.dp_sgd.enabled:
            row["dp_epsilon_max"] = self._epsilon_max(clients)
        self.rows.append(row)
        for name, rows in audit.rows.items():
            self.item_rows[name].extend({"round": server_round, **r} for r in rows)
        write_jsonl(self.folder / "metrics.jsonl", self.rows)
        for name, rows in self.item_rows.items():
            if rows:
                write_jsonl(self.folder / f"{name}.jsonl", rows)
        curves = {**({GLOBAL: audit.roc} if audit.roc else {})}
        curves.update(self.client_rocs.pop(server_round, {}))
        if curves:
            atomic_write_json(self.folder / "roc" / f"round-{server_round:03d}.json", curves)
        if self.on_round:
            self.on_round(row)
        return row

    def _saves_round(self, server_round: int) -> bool:
        every = self.config.output.checkpoint_every
        last = server_round == self.config.federation.rounds
        return every > 0 and (server_round % every == 0 or last)

    def _epsilon_max(self, clients: dict) -> float:
        """Largest epsilon any client has spent so far: a client's epsilon only grows, and
        a client sampled out of this round keeps the one it reported before."""
        before = self.rows[-1].get("dp_epsilon_max", 0.0) if self.rows else 0.0
        return max([before, *(c["dp_epsilon"] for c in clients.values() if "dp_epsilon" in c)])

    def finish(self, model: torch.nn.Module) -> dict:
        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if self.save_rounds:
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
            "before": {  # the first audited round (round 0 in a run)
                k: self.rows[0][k]
                for k in BEFORE_KEYS
                if k in self.rows[0]
            },
            "final": self.rows[-1],
        }
        atomic_write_json(self.folder / "summary.json", summary)
        return summary
