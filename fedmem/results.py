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
(`<output.dir>/fedmem.sqlite`, fedmem.store).
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

from fedmem import audit_records
from fedmem.audit import GLOBAL, audit_model, client_vantage
from fedmem.canaries import to_jsonl_rows
from fedmem.config import Config, ConfigError, build_config, to_dict
from fedmem.dataset import build_federated_data
from fedmem.mitigations.weight_noise import audit_sigma, noise_seed, noised_weights
from fedmem.models import build_model, get_trainable_state, set_trainable_state, trainable_names
from fedmem.privacy_audit import RunDPAudit

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
        self.dp_audit: RunDPAudit | None = None  # built in start()

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
        stale = ["summary.json", "metrics.jsonl", *(f"{n}.jsonl" for n in AUDIT_FILES)]
        for name in stale:
            (self.folder / name).unlink(missing_ok=True)
        for folder in (CHECKPOINTS, "roc"):
            shutil.rmtree(self.folder / folder, ignore_errors=True)
        atomic_write_json(self.folder / "config.json", to_dict(self.config))
        write_jsonl(self.folder / "canaries.jsonl", to_jsonl_rows(data.canaries))
        write_jsonl(
            self.folder / "exposure_canaries.jsonl", to_jsonl_rows(data.exposure_canaries)
        )

        (self.folder / "dp_audit_records.jsonl").unlink(missing_ok=True)
        if data.audit_records:  # the inclusion bits: read by the auditor only
            rows = audit_records.to_jsonl_rows(data.audit_records)
            write_jsonl(self.folder / "dp_audit_records.jsonl", rows)
        self.dp_audit = RunDPAudit(self.config)
        return None

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
        write_jsonl(self.folder / "metrics.jsonl", self.rows)
        for name in AUDIT_FILES:
            path = self.folder / f"{name}.jsonl"
            if path.is_file():
                self.item_rows[name] = [r for r in read_jsonl(path) if r["round"] <= done]
                write_jsonl(path, self.item_rows[name])
        for curve in (self.folder / "roc").glob("round-*.json"):
            suffix = curve.stem.removeprefix("round-")
            if suffix.isdigit() and int(suffix) > done:
                curve.unlink()
        (self.folder / "summary.json").unlink(missing_ok=True)
        folder = round_checkpoint_dir(self.folder, done)
        state = json.loads((folder / RESUME_FILE).read_text())
        self.started = time.perf_counter() - float(state.get("elapsed_s", 0.0))
        self.dp_audit = self._replayed_dp_audit(done)
        return ResumePoint(round=done, folder=folder, state=state)

    def _replayed_dp_audit(self, done: int) -> RunDPAudit:
        """The DP audit as it stood after round `done`: it remembers the round-0 model and
        sums over the rounds seen, so it is fed the saved global states again."""
        dp_audit = RunDPAudit(self.config)
        if not dp_audit.active:
            return dp_audit
        model = build_model(self.config, seed=self.config.seed)
        for server_round in range(done + 1):
            folder = round_checkpoint_dir(self.folder, server_round)
            if (folder / TRAINABLE_FILE).is_file():
                load_checkpoint(folder, model)
                dp_audit.replay(server_round, model)
        return dp_audit

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
            **(outcome or {}),
            **audit.metrics,
            "client_view": self._client_view(server_round),
        }
        if self.config.dp_sgd.enabled:
            row["dp_epsilon_max"] = self._epsilon_max(clients)
        if self.dp_audit is not None:  # on the trained model itself, never weight-noised
            dp_audit = self.dp_audit.measure(server_round, model, row.get("dp_epsilon_max"))
            if dp_audit:
                row["dp_audit"] = dp_audit
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
        if self.save_rounds and self._saves_round(server_round):
            folder = round_checkpoint_dir(self.folder, server_round)
            meta = {"round": server_round, "finetuning": self.config.model.finetuning}
            save_checkpoint(folder, model, meta)
            # Written last: its presence marks the round complete (resumable).
            state = {"round": server_round, "elapsed_s": row["elapsed_s"], **(resume_state or {})}
            atomic_write_json(folder / RESUME_FILE, state)
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
        if "dp_audit" in self.rows[-1]:
            summary["dp_audit"] = self.rows[-1]["dp_audit"]
        atomic_write_json(self.folder / "summary.json", summary)
        from fedmem.store import ingest_run  # the store indexes finished runs only

        ingest_run(self.folder)  # into <output.dir>/fedmem.sqlite, one transaction
        return summary


def _remove_temporary_files(run_dir: Path) -> None:
    """Temporary files a killed run left mid-write (atomic writes name them `.<name>.*`)."""
    for folder in [run_dir, *(run_dir / CHECKPOINTS).glob("round-*")]:
        for path in folder.glob(".*"):
            if path.is_file():
                path.unlink()
