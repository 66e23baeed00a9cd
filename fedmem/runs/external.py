"""Audit a causal LM that fedmem did not train.

`fedmem audit --model PATH [--base BASE] --canaries FILE.jsonl [--members FILE.jsonl
--nonmembers FILE.jsonl] [--out DIR] [--set attack.x=y ...]` builds a Config for the model
(model.name = PATH, or BASE with PATH as model.adapter for a peft adapter folder;
data.source = "texts", canaries.source = "labelled") and runs the same per-round audit as
a fedmem run (`audit_model`, through the run recorder) once, as round 0, into `--out`
(default `audits/<model folder name>`), in the run folder's own file layout. Exposure
needs fedmem's own digit canaries and is skipped; `reference` and `rmia` need the model
before fine-tuning and are skipped without `--base`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedmem.config import (
    MIA_SCORES,
    Config,
    ConfigError,
    apply_overrides,
    build_config,
    parse_override,
)

REFERENCE_SCORES = ("reference", "rmia")
EXTERNAL_NOTE = "external model: audited once, from outside fedmem (no clients)"


@dataclass(frozen=True)
class ExternalModel:
    path: Path  # a full model folder, or a peft adapter folder
    base: Path | None  # --base
    canaries: Path
    members: Path | None = None
    nonmembers: Path | None = None


def adapter_base(model: ExternalModel) -> Path | None:
    """The base of a peft adapter folder (--base, else the adapter's own
    base_model_name_or_path when that is a local folder); None for a full model."""
    config_file = model.path / "adapter_config.json"
    if not config_file.is_file():
        return None
    if model.base is not None:
        return model.base
    try:
        named = json.loads(config_file.read_text()).get("base_model_name_or_path") or ""
    except json.JSONDecodeError as err:
        raise ConfigError(f"{config_file}:{err.lineno}: invalid JSON: {err.msg}") from None
    if not Path(named).is_dir():
        raise ConfigError(
            f"--model {model.path}: an adapter whose base {named!r} is not a local folder; "
            "give --base BASE_PATH"
        )
    return Path(named)


def labelled_copies(path: Path) -> tuple[int, ...]:
    """The replica counts the labelled canary file holds (checked line by line)."""
    from fedmem.data.canaries import load_labelled_canaries

    canaries = load_labelled_canaries(path, 1, "chars")  # the split does not matter here
    return tuple(sorted({c.replicas for c in canaries if c.replicas}))


def external_raw(model: ExternalModel, out: Path) -> dict:
    """The config, as a raw TOML-like dict, that audits `model` into `out`."""
    if not model.path.is_dir():
        raise ConfigError(f"--model {model.path}: no such model folder")
    base = adapter_base(model)
    scores = [s for s in MIA_SCORES if model.base is not None or s not in REFERENCE_SCORES]
    return {
        "name": out.name,
        "model": {
            "name": str(base or model.path),
            "adapter": str(model.path) if base else "",
            "finetuning": "lora" if base else "full",
        },
        "federation": {"num_clients": 1, "rounds": 1},
        "data": {
            "source": "texts",
            "path": str(model.members or ""),
            "heldout_path": str(model.nonmembers or ""),
        },
        "canaries": {
            "source": "labelled",
            "path": str(model.canaries),
            "replica_counts": list(labelled_copies(model.canaries)),
            "exposure_per_count": 0,
        },
        "attack": {
            "client_view": False,
            "membership": {"scores": scores, "reference_model": str(model.base or "")},
        },
        "output": {"dir": str(out.parent)},
    }


def external_config(model: ExternalModel, out: Path, overrides: Sequence[str] = ()) -> Config:
    for item in overrides:
        if not parse_override(item)[0].startswith("attack."):
            raise ConfigError(f"--set {item!r}: auditing a model may change attack.* keys only")
    return build_config(apply_overrides(external_raw(model, out), overrides))


def load_external_model(config: Config):
    """model.name, with the peft adapter at model.adapter on top when there is one."""
    from fedmem.models.loading import load_base_model

    model = load_base_model(config)
    if config.model.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, config.model.adapter)
    return model.eval()


def skipped_notes(config: Config) -> list[str]:
    notes = ["exposure: skipped (needs fedmem's own digit canaries; none given)"]
    if not config.attack.membership.reference_model:
        notes.append("membership: reference and rmia skipped (no --base to compare with)")
    if not config.data.path and not config.data.heldout_path:
        notes.append("membership: canaries only (no --members / --nonmembers)")
    return notes


def audit_external(model: ExternalModel, out: Path | None = None,
                   overrides: Sequence[str] = ()) -> tuple[Path, list[str]]:
    """Audit `model` into `out`; returns the folder and the notes on what was skipped."""
    from fedmem.runs.recorder import RunRecorder

    out = Path(out) if out is not None else Path("audits") / model.path.resolve().name
    config = external_config(model, out, overrides)
    recorder = RunRecorder(config, folder=out, save_rounds=False, client_view_note=EXTERNAL_NOTE)
    recorder.start()
    audited = load_external_model(config)
    recorder.record(0, audited)
    recorder.finish(audited)
    return out, skipped_notes(config)
