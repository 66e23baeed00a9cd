"""fedmem's Python API: what the `fedmem` command does, as typed functions.

`fedmem.api` re-exports this module (docs/api.md); the CLI (`fedmem.drivers.cli`) is a thin
layer over the same functions and adds only terminal output. Importing it imports no
torch, Flower or Ray: they load when a run starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedmem.config import (
    Config,
    ConfigError,
    apply_overrides,
    build_config,
    config_differences,
)
from fedmem.config import load_config as _load_config

if TYPE_CHECKING:
    import pandas as pd

    from fedmem.runs.report_files import Report
    from fedmem.runs.tracking import Tracker

# ------------------------------------------------------------------------- progress events


@dataclass(frozen=True)
class RunStarted:
    """A run begins training (after its data and base model are ready)."""

    name: str
    mode: str  # "federated" or "centralized"
    rounds: int
    run_dir: Path
    resumed_after: int | None  # the last complete round it continues after, if resumed


@dataclass(frozen=True)
class RoundAudited:
    """A round is trained and its global model audited; `row` is its metrics.jsonl line
    (round 0: the model before fine-tuning)."""

    round: int
    rounds: int
    row: dict


@dataclass(frozen=True)
class RunFinished:
    run_dir: Path
    summary: dict


@dataclass(frozen=True)
class CellStarted:
    """A sweep cell starts (or resumes); its rounds follow as RoundAudited events."""

    index: int
    total: int
    name: str
    rounds: int


@dataclass(frozen=True)
class CellFinished:
    index: int
    total: int
    name: str
    run_dir: Path
    skipped: bool  # finished before this sweep call


Event = RunStarted | RoundAudited | RunFinished | CellStarted | CellFinished
Progress = Callable[[Event], None]

# ------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class RunResult:
    """A finished run (or re-audit, or audit of an external model): its folder and summary."""

    run_dir: Path
    summary: dict
    notes: tuple[str, ...] = ()  # what an external-model audit skipped, and why


@dataclass(frozen=True)
class SweepResult:
    name: str
    folder: Path  # the sweep folder; its store is folder/fedmem.sqlite
    cells: tuple[Path, ...]  # every cell's run folder, in sweep order
    ran: tuple[str, ...]  # the cells run by this call (the others had finished before)


# ------------------------------------------------------------------------------ running


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """The validated config of a TOML file with `key=value` overrides (as `--set`)."""
    return _load_config(path, list(overrides))


def prepare(config: Config) -> None:
    """Build the data and tokenizer and check the config against them: every error here
    comes before anything is written."""
    from fedmem.data.federated import (
        build_federated_data,
        check_data_sizes,
        check_every_client_trains,
        client_sizes,
    )
    from fedmem.models.loading import load_tokenizer

    check_data_sizes(config, load_tokenizer)
    if config.mode == "federated":
        check_every_client_trains(config, client_sizes(config, load_tokenizer))
        if config.secagg.enabled:
            from fedmem.mitigations.secure_aggregation import max_weight

            max_weight(config)
    elif not build_federated_data(config, load_tokenizer).pooled_texts:
        raise ConfigError("data: the centralized baseline gets no training samples")
    load_tokenizer(config)


def train_and_audit(
    config: Config,
    on_round: Callable[[dict], None] | None = None,
    verbose: bool = False,
    resume: bool = False,
    tracker: Tracker | None = None,
) -> None:
    """One run, federated or centralized, writing its folder (and its store rows);
    `resume` continues its folder after the last complete round. `on_round` gets each
    round's metrics row; `tracker` logs each row to MLflow as well. The libraries' warnings
    and log lines go to the run folder's run.log (`verbose`: to the terminal, as they come)."""
    from contextlib import nullcontext

    from fedmem.runs.run_log import to_run_log

    if tracker is not None:
        on_round = _also_tracked(on_round, tracker)
    with nullcontext() if verbose else to_run_log(config.run_dir, resume):
        if config.mode == "centralized":
            from fedmem.drivers.centralized import run_centralized

            run_centralized(config, on_round=on_round, resume=resume)
        else:
            from fedmem.drivers.simulation import run_federated

            if not verbose:  # after the import: importing flwr resets its logger's level
                logging.getLogger("flwr").setLevel(logging.ERROR)
            run_federated(config, on_round=on_round, resume=resume, verbose=verbose)


def _also_tracked(on_round: Callable[[dict], None] | None, tracker: Tracker):
    def both(row: dict) -> None:
        tracker.log_round(row)
        if on_round:
            on_round(row)

    return both


def run(
    config: Config,
    progress: Progress | None = None,
    *,
    resume: bool = False,
    verbose: bool = False,
) -> RunResult:
    """Fine-tune and audit as `config` describes (federated or centralized by `config.mode`)
    into `config.run_dir`; `progress` receives RunStarted, a RoundAudited per round and
    RunFinished. `resume` continues an interrupted run folder after its last complete round
    (see `resume_config`). With `output.tracking = "mlflow"` the run is logged to MLflow too."""
    from fedmem.runs.folder import last_complete_round
    from fedmem.runs.tracking import finish_run, start_run

    prepare(config)
    tracker = start_run(config, resume)
    done = last_complete_round(config.run_dir) if resume else None
    rounds = config.federation.rounds
    emit = progress or (lambda event: None)
    emit(RunStarted(config.name, config.mode, rounds, config.run_dir, done))
    try:
        train_and_audit(config, _rounds_to(emit, rounds), verbose, resume, tracker)
        summary = _summary(config.run_dir)
    except BaseException:
        if tracker is not None:
            tracker.finish("FAILED")  # resuming the folder continues this MLflow run
        raise
    if tracker is not None:
        finish_run(tracker, config.run_dir)
    emit(RunFinished(config.run_dir, summary))
    return RunResult(config.run_dir, summary)


def _rounds_to(emit: Progress, rounds: int) -> Callable[[dict], None]:
    return lambda row: emit(RoundAudited(row["round"], rounds, row))


def _summary(folder: Path) -> dict:
    path = Path(folder) / "summary.json"
    if not path.exists():
        raise RuntimeError(f"the run ended without writing {path}; see the errors above "
                           f"and {Path(folder) / 'run.log'}")
    return json.loads(path.read_text())


def resume_config(run_dir: str | Path, config_path: str | Path | None = None,
                  overrides: Sequence[str] = ()) -> Config:
    """The config saved in an interrupted run folder, placed at that folder, to pass to
    `run(..., resume=True)`; a config given as well (a file and/or overrides) must not
    differ from it, the folder's name and location aside."""
    run_dir = Path(run_dir)
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.json there, not a fedmem run folder")
    if (run_dir / "summary.json").is_file():
        raise ConfigError(f"--resume {run_dir}: the run is complete (summary.json exists)")
    try:
        raw = json.loads(saved_path.read_text(encoding="utf-8"))
        saved = build_config(raw)
    except (ValueError, OSError) as err:  # ConfigError and JSON errors are ValueErrors
        raise ConfigError(f"{saved_path}: {str(err).splitlines()[0]}") from None
    saved = _placed_at(saved, run_dir)
    if config_path or overrides:
        given = (
            _load_config(config_path, list(overrides))
            if config_path
            else build_config(apply_overrides(raw, list(overrides)))
        )
        differs = config_differences(saved, given)
        if differs:
            key, was, now = differs[0]
            more = f" (and {len(differs) - 1} more keys)" if len(differs) > 1 else ""
            raise ConfigError(
                f"--resume {run_dir}: the given config differs from {saved_path} at {key} "
                f"({now!r}, saved {was!r}){more}; to resume, give no CONFIG or --set"
            )
    return saved


def _placed_at(config: Config, run_dir: Path) -> Config:
    """`config` with its run folder at `run_dir` (the folder may have moved, or the run may
    have been started from another working directory)."""
    if config.run_dir.resolve() == run_dir.resolve():
        return config
    where = run_dir.resolve()
    output = dataclasses.replace(config.output, dir=str(where.parent))
    return dataclasses.replace(config, name=where.name, output=output)


def reaudit(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    rounds: Sequence[int] | None = None,
    name: str | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Audit a finished run's saved rounds (all, or `rounds`) again with other `attack.*`
    settings, into `run_dir/audits/<name>/` (default audit-1, audit-2, ...)."""
    from fedmem.runs.reaudit import reaudit as reaudit_rounds
    from fedmem.runs.reaudit import reaudit_config

    total = reaudit_config(Path(run_dir), overrides).federation.rounds
    on_round = _rounds_to(progress, total) if progress else None
    folder = reaudit_rounds(Path(run_dir), overrides, rounds, name, on_round)
    return RunResult(folder, _summary(folder))


def audit_model(
    model: str | Path,
    canaries: str | Path,
    *,
    base: str | Path | None = None,
    members: str | Path | None = None,
    nonmembers: str | Path | None = None,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> RunResult:
    """Audit a causal LM fedmem did not train (a Hugging Face model folder, or a peft
    adapter folder over `base`) against labelled canaries, once, into `out` (default
    audits/<model folder name>). `notes` says what was skipped and why."""
    from fedmem.runs.external import ExternalModel, audit_external

    def optional(path: str | Path | None) -> Path | None:
        return Path(path) if path else None

    spec = ExternalModel(Path(model), optional(base), Path(canaries), optional(members),
                         optional(nonmembers))
    folder, notes = audit_external(spec, optional(out), list(overrides))
    return RunResult(folder, _summary(folder), tuple(notes))


def sweep(
    path: str | Path,
    overrides: Sequence[str] = (),
    progress: Progress | None = None,
    *,
    verbose: bool = False,
    parallel: int = 1,
) -> SweepResult:
    """Run every unfinished cell of a sweep file (finished cells are skipped, an interrupted
    one resumes), one after another or, with `parallel` > 1, up to that many at once, each
    in a process of its own (a Ray task of the cells' cluster when they set
    `federation.ray_address`); `progress` receives CellStarted, the cell's RoundAudited
    events (one after another only) and CellFinished. With `output.tracking = "mlflow"` the
    sweep is a parent MLflow run with one child run per cell (cells finished before, and
    cells run in parallel, are logged from their folders when they end)."""
    from fedmem.drivers.sweep import SweepEvents, load_sweep, run_sweep, run_sweep_parallel
    from fedmem.runs.tracking import Tracker, log_finished, start_run

    spec = load_sweep(path, list(overrides))  # every cell validated before anything runs
    emit = progress or (lambda event: None)
    total = len(spec.cells)
    first = spec.cells[0].config
    parent = (
        Tracker(first, spec.folder, spec.name, run_name=spec.name)
        if first.output.tracking == "mlflow" else None
    )
    if parent is not None:
        parent.running()
    experiment = first.output.experiment or spec.name
    current: dict[str, int] = {}

    def run_cell(config: Config, on_round, resume: bool) -> None:
        prepare(config)
        tracker = start_run(config, resume, experiment, parent)
        try:
            train_and_audit(config, on_round, verbose, resume, tracker)
        except BaseException:
            if tracker is not None:
                tracker.finish("FAILED")
            raise
        if tracker is not None:
            from fedmem.runs.tracking import finish_run

            finish_run(tracker, config.run_dir)

    def cell_started(index: int, cell) -> None:
        current["rounds"] = cell.config.federation.rounds
        emit(CellStarted(index, total, cell.name, cell.config.federation.rounds))

    def round_done(row: dict) -> None:
        emit(RoundAudited(row["round"], current["rounds"], row))

    def cell_done(index: int, cell, skipped: bool) -> None:
        # Finished before, or in a process of its own: logged from its folder.
        if (skipped or parallel > 1) and parent is not None:
            log_finished(cell.config, experiment, parent)
        emit(CellFinished(index, total, cell.name, cell.run_dir, skipped))

    events = SweepEvents(cell_started, round_done, cell_done)
    try:
        if parallel == 1:
            ran = run_sweep(spec, run_cell, events)
        else:
            ran = run_sweep_parallel(spec, parallel, list(overrides), events)
    except BaseException:
        if parent is not None:
            parent.finish("FAILED")
        raise
    if parent is not None:
        parent.finish()
    return SweepResult(spec.name, spec.folder, tuple(c.run_dir for c in spec.cells),
                       tuple(ran))


def sweep_cell(
    path: str | Path, name: str, overrides: Sequence[str] = (), *, verbose: bool = False
) -> None:
    """One cell of a sweep, in this process, resumed or rerun as the sequential loop would:
    what each process of a parallel sweep runs (`fedmem sweep FILE --cell NAME`). Its MLflow
    run, if any, is logged by the parent sweep from the cell's folder."""
    from fedmem.drivers.sweep import find_cell, load_sweep, run_one_cell

    spec = load_sweep(path, list(overrides))

    def run_cell(config: Config, on_round, resume: bool) -> None:
        prepare(config)
        train_and_audit(config, on_round, verbose, resume)

    run_one_cell(find_cell(spec, name), run_cell)


def report(path: str | Path) -> Report:
    """Ingest a run folder or a folder of runs (a sweep) and write report.md, report.html
    and the figures into it."""
    from fedmem.runs.report_files import write_report

    return write_report(path)


# ------------------------------------------------------------------------------ reading


def runs(store: str | Path) -> pd.DataFrame:
    """One row per run of the results store at `store` (a fedmem.sqlite file, the folder
    holding it, or a run folder next to it): identity, mitigations, final headline numbers."""
    from fedmem.runs.store import query

    return query(store, "runs")


def rounds(store: str | Path, wide: bool = False) -> pd.DataFrame:
    """One row per (run, round): the headline columns; `wide` = every numeric metric of
    metrics.jsonl as a column (dotted keys, e.g. extraction.by_replicas.4.exact_rate)."""
    from fedmem.runs.store import query, rounds_wide

    if wide:
        return rounds_wide(store)
    return query(store, "SELECT * FROM rounds ORDER BY run_id, round")


def extraction(store: str | Path) -> pd.DataFrame:
    """One row per (run, round, decoding, prefix length, canary): the extraction attack's
    outcome (exact, token accuracy, longest match, generated text) and replica count."""
    from fedmem.runs.store import query

    return query(store, "SELECT * FROM canary_results ORDER BY run_id, round")


def membership(store: str | Path) -> pd.DataFrame:
    """One row per (run, round, vantage, scored sample): member flag, kind, every MIA score,
    read from each stored run's membership.jsonl."""
    import pandas as pd

    from fedmem.files import read_jsonl
    from fedmem.runs.store import query

    frames = []
    for run_id, folder in query(store, "SELECT run_id, path FROM runs").itertuples(index=False):
        path = Path(folder) / "membership.jsonl"
        if path.is_file():
            frame = pd.json_normalize(read_jsonl(path))
            frame.insert(0, "run_id", run_id)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
