"""fedmem's public Python API (docs/api.md): load a config, run it, re-audit a run, audit a
model fedmem did not train, run a sweep, and read the results store as pandas DataFrames.

    import fedmem.api as fm

    config = fm.load_config("configs/quickstart.toml", ["federation.rounds=2"])
    result = fm.run(config, progress=print)
    fm.runs(result.run_dir)  # the store next to the run folder, one row per run

The `fedmem` command is a thin layer over these same functions. Importing this module
imports no torch, Flower or Ray; a run loads them when it starts.
"""

from fedmem.config import ConfigError
from fedmem.drivers.api import (
    CellFinished,
    CellStarted,
    Event,
    Progress,
    RoundAudited,
    RunFinished,
    RunResult,
    RunStarted,
    SweepResult,
    audit_model,
    extraction,
    load_config,
    membership,
    prepare,
    reaudit,
    report,
    resume_config,
    rounds,
    run,
    runs,
    sweep,
)
from fedmem.files import DataError
from fedmem.runs.store import StoreError

__all__ = [
    "CellFinished",
    "CellStarted",
    "ConfigError",
    "DataError",
    "Event",
    "Progress",
    "RoundAudited",
    "RunFinished",
    "RunResult",
    "RunStarted",
    "StoreError",
    "SweepResult",
    "audit_model",
    "extraction",
    "load_config",
    "membership",
    "prepare",
    "reaudit",
    "report",
    "resume_config",
    "rounds",
    "run",
    "runs",
    "sweep",
]
