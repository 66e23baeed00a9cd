"""Re-audit a finished run: audit its saved per-round global states under other attack
settings, without retraining.

`fedmem audit RUN_DIR [--round N ...] [--set attack.x=y ...] [--name NAME]` rebuilds the
run's model from its `config.json`, loads each `checkpoints/round-NNN/` state into it and
runs the audit with the overridden `attack.*` settings (weight noise, if the run had it, is
applied as in the run). Results go to `RUN_DIR/audits/NAME/` (default `audit-1`, `audit-2`,
... the first free one) in the run folder's own file layout; the original audit files are
never touched, and an existing NAME is refused. Only the global model was saved, so the
client vantage point is not available to a re-audit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from fedmem.config import Config, ConfigError, apply_overrides, build_config, parse_override
from fedmem.models.loading import build_model
from fedmem.runs.folder import load_checkpoint, round_checkpoint_dir
from fedmem.runs.recorder import RunRecorder

REAUDIT_NOTE = "re-audit: only the global state of each round is saved"
_ROUND_DIR = re.compile(r"round-(\d{3,})")


def saved_rounds(run_dir: Path) -> list[int]:
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for d in folder.iterdir() if (m := _ROUND_DIR.fullmatch(d.name)))


def reaudit_config(run_dir: Path, overrides: Sequence[str]) -> Config:
    path = Path(run_dir) / "config.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (is {run_dir} a run folder?)") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
    for item in overrides:
        key, _ = parse_override(item)
        if not key.startswith("attack."):
            raise ConfigError(
                f"--set {item!r}: a re-audit may change attack.* keys only "
                "(anything else would not match the saved states)"
            )
    return build_config(apply_overrides(raw, overrides))


def audit_folder(run_dir: Path, name: str | None) -> Path:
    parent = Path(run_dir) / "audits"
    if name is not None:
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"--name {name!r}: must be a plain folder name")
        if (parent / name).exists():
            raise ConfigError(f"--name {name!r}: {parent / name} exists; pick another name")
        return parent / name
    n = 1
    while (parent / f"audit-{n}").exists():
        n += 1
    return parent / f"audit-{n}"


def reaudit(
    run_dir: Path,
    overrides: Sequence[str] = (),
    rounds: Sequence[int] | None = None,
    name: str | None = None,
    on_round: Callable[[dict], None] | None = None,
) -> Path:
    """Audit the saved rounds (all, or `rounds`) of `run_dir`; returns the output folder."""
    run_dir = Path(run_dir)
    config = reaudit_config(run_dir, overrides)
    available = saved_rounds(run_dir)
    if not available:
        raise ConfigError(
            f"{run_dir / 'checkpoints'}: no per-round states saved "
            "(the run had output.checkpoint_every = 0)"
        )
    wanted = list(rounds) if rounds else available
    if missing := [r for r in wanted if r not in available]:
        raise ConfigError(
            f"--round {missing[0]}: no saved state in {run_dir / 'checkpoints'} "
            f"(saved rounds: {', '.join(map(str, available))})"
        )
    folder = audit_folder(run_dir, name)
    recorder = RunRecorder(
        config, on_round, folder=folder, save_rounds=False, client_view_note=REAUDIT_NOTE
    )
    recorder.start()
    model = build_model(config, seed=config.seed)
    for server_round in sorted(wanted):
        load_checkpoint(round_checkpoint_dir(run_dir, server_round), model)
        recorder.record(server_round, model)
    recorder.finish(model)
    return folder
