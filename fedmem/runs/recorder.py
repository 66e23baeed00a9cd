"""The run recorder: audits the global model each round and keeps the run folder (see
fedmem.runs.folder for its layout) up to date, atomically."""


from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from fedmem.audits import registry as audits
from fedmem.audits.dp.run_audit import RunDPAudit
from fedmem.audits.model_audit import GLOBAL, audit_model, client_vantage
from fedmem.config import Config, ConfigError, config_differences, to_dict
from fedmem.data import audit_records
from fedmem.data.canaries import to_jsonl_rows
from fedmem.data.federated import planted
from fedmem.files import atomic_write_json, read_jsonl, write_jsonl
from fedmem.mitigations import registry as mitigations
from fedmem.mitigations.dp_history import CANARY_SUMS_METRIC, decode_sums
from fedmem.models.loading import build_model, load_tokenizer
from fedmem.runs.folder import (
    CHECKPOINTS,
    RESUME_FILE,
    TRAINABLE_FILE,
    ResumePoint,
    last_complete_round,
    load_checkpoint,
    remove_temporary_files,
    round_checkpoint_dir,
    save_checkpoint,
)

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
        self.outputs = audits.outputs()  # audit name -> its per-item rows' file
        self.item_rows: dict[str, list[dict]] = {name: [] for name in self.outputs}
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
        data = planted(self.config, load_tokenizer)
        self.folder.mkdir(parents=True, exist_ok=True)
        stale = ["summary.json", "metrics.jsonl", *self.outputs.values()]
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
        differs = config_differences(json.loads(saved.read_text()), self.config)
        if differs:
            raise ConfigError(f"{saved}: the run was made with another config ({differs[0][0]})")
        done = last_complete_round(self.folder)
        if done is None:
            return None
        remove_temporary_files(self.folder)
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
        for name, file in self.outputs.items():
            path = self.folder / file
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
        self.dp_audit.restore(state)
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
        strategy_facts: dict[str, dict] | None = None,
        outcome: dict | None = None,
        resume_state: dict | None = None,
        federated_attack: dict | None = None,
    ) -> dict:
        """Audit `model` as the global model after `server_round`, then checkpoint it.

        `clients`: the round's per-client training facts keyed by client index, as the
        server received them (under SecAgg+ these metrics are not masked, the update is);
        `fit_stage`: the fit stage's wall time and message bytes measured at the server;
        `strategy_facts`: what each mitigation's strategy wrapper used, keyed by mitigation
        (client_dp: the clipping norm and noise std); `outcome`: whether the round updated
        the global model, the clients that failed, why it was abandoned;
        `resume_state`: what, besides the model, a resumed run needs (JSON);
        `federated_attack`: the federated attackers' measure of the round, when it was due
        (fedmem.audits.federated_attack, measured by the server). The audit sees
        the model as the mitigations' audited-model transforms make it (weight noise), with
        their facts in the row; `model` is left exactly as it was."""
        with mitigations.audited_model(self.config, model, server_round) as transform_facts:
            audit = audit_model(self.config, model)  # vantage: GLOBAL
        clients, canary_sums = split_canary_sums(clients or {})
        row = {
            "round": server_round,
            "elapsed_s": round(time.perf_counter() - self.started, 3),
            "secure_aggregation": self.config.secagg.enabled,
            "clients": {str(k): clients[k] for k in sorted(clients)},
            "bytes_sent": sum(c.get("bytes_sent", 0) for c in clients.values()),
            **transform_facts,  # weight_noise_sigma
            **({"fit_stage": fit_stage} if fit_stage else {}),
            **(strategy_facts or {}),  # client_dp
            **(outcome or {}),
            **audit.metrics,
            "client_view": self._client_view(server_round),
        }
        if federated_attack:  # its wall time is a measurement (folder.MEASURED_FIELDS)
            attack = dict(federated_attack)
            row["federated_attack_s"] = attack.pop("seconds", None)
            row["federated_attack"] = attack
        if self.config.dp_sgd.enabled:
            row["dp_epsilon_max"] = self._epsilon_max(clients)
        if self.dp_audit is not None:  # on the trained model itself, never weight-noised
            dp_audit = self.dp_audit.measure(
                server_round, model, row.get("dp_epsilon_max"), canary_sums
            )
            if dp_audit:
                row["dp_audit"] = dp_audit
        self.rows.append(row)
        for name, rows in audit.rows.items():
            self.item_rows[name].extend({"round": server_round, **r} for r in rows)
        write_jsonl(self.folder / "metrics.jsonl", self.rows)
        for name, rows in self.item_rows.items():
            if rows:
                write_jsonl(self.folder / self.outputs[name], rows)
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
            if self.dp_audit is not None:
                state.update(self.dp_audit.resume_state())
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
            # DP audit records among the training rows (dp_audit.inject): runs compare
            # fairly only when they trained on the same rows.
            "audit_records_in_training": planted(
                self.config, load_tokenizer
            ).audit_records_in_training,
            "before": {  # the first audited round (round 0 in a run)
                k: self.rows[0][k]
                for k in ("round", *audits.before_keys())
                if k in self.rows[0]
            },
            "final": self.rows[-1],
        }
        if "dp_audit" in self.rows[-1]:
            summary["dp_audit"] = self.rows[-1]["dp_audit"]
        atomic_write_json(self.folder / "summary.json", summary)
        from fedmem.runs.store import ingest_run  # the store indexes finished runs only

        ingest_run(self.folder)  # into <output.dir>/fedmem.sqlite, one transaction
        return summary


def split_canary_sums(clients: dict) -> tuple[dict, dict[int, np.ndarray]]:
    """(the clients' facts without their gradient-canary sums, the sums per client): the
    sums are bytes for the DP audit, not facts of the round."""
    facts, sums = {}, {}
    for client, metrics in clients.items():
        facts[client] = {k: v for k, v in metrics.items() if k != CANARY_SUMS_METRIC}
        if CANARY_SUMS_METRIC in metrics:
            sums[int(client)] = decode_sums(metrics[CANARY_SUMS_METRIC])
    return facts, sums
