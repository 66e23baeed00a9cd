"""Experiment tracking with MLflow (`output.tracking = "mlflow"`, the `fedmem[tracking]` extra).

A run logs its resolved config as parameters when it starts, every audited round's numeric
metrics with the round as the step, and at its end its summary, report and figures as
artifacts. A sweep is a parent run whose cells are its child runs. The default store is a
SQLite file next to the run folders (`sqlite:///<output.dir>/mlflow.db`): `mlflow ui
--backend-store-uri sqlite:///runs/mlflow.db` shows it with no server to start. The run
folder keeps the MLflow run's id in `mlflow.json`, so a resumed run (or a rerun sweep)
continues the same MLflow run instead of adding another; a finished folder the store does
not hold yet (a sweep's cell finished before tracking was on) is logged from its files.
MLflow is imported only here, and only when a run asks for it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from fedmem.config import Config, ConfigError, flatten_dotted, to_dict
from fedmem.files import atomic_write_json
from fedmem.runs.store import flatten

RUN_FILE = "mlflow.json"  # {"run_id", "experiment_id", "tracking_uri"} in a run or sweep folder
DB_NAME = "mlflow.db"
ARTIFACTS = "mlartifacts"  # beside a SQLite store's file
DEFAULT_EXPERIMENT = "fedmem"
MISSING = "output.tracking = 'mlflow' needs MLflow: pip install 'fedmem[tracking]'"
PARAM_CHARS = 6000  # MLflow's limit on a parameter value
BATCH = 1000  # MLflow's limit on metrics per log_batch call
_NAME_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


def mlflow_module() -> Any:
    """The mlflow package, or a one-line ConfigError naming the extra that installs it."""
    try:
        import mlflow
    except ImportError:
        raise ConfigError(MISSING) from None
    return mlflow


def tracking_uri(config: Config) -> str:
    """`output.tracking_uri`, or the SQLite file next to the run folders."""
    if config.output.tracking_uri:
        return config.output.tracking_uri
    return f"sqlite:///{(Path(config.output.dir) / DB_NAME).resolve()}"


def artifact_root(uri: str) -> str | None:
    """Where a SQLite store's artifacts go: `mlartifacts/` beside its file (MLflow's own
    default, ./mlruns, would land in whatever folder the run was started from). None for
    other stores: a server keeps its own artifact root."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / ARTIFACTS).as_uri()


def metric_name(key: str) -> str:
    """A dotted metrics key in the characters MLflow accepts in a metric name."""
    return _NAME_BAD.sub("_", key)


def round_metrics(row: dict) -> dict[str, float]:
    """The numeric leaves of one metrics.jsonl row under clean dotted names (the round
    itself is the step, not a metric); non-finite values are left out."""
    return {
        metric_name(key): value
        for key, value in flatten({k: v for k, v in row.items() if k != "round"}).items()
        if math.isfinite(value)
    }


def config_params(config: Config) -> dict[str, str]:
    """The resolved config, one parameter per flat key, values as JSON text."""
    return {
        key: json.dumps(value)[:PARAM_CHARS]
        for key, value in flatten_dotted(to_dict(config)).items()
    }


class Tracker:
    """One MLflow run kept in step with one run folder (or, for a sweep, its folder)."""

    def __init__(self, config: Config, folder: Path, experiment: str | None = None,
                 parent: Tracker | None = None, run_name: str | None = None) -> None:
        mlflow = mlflow_module()
        from mlflow.tracking import MlflowClient

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)  # the default store's folder, too
        self.uri = parent.uri if parent else tracking_uri(config)
        self.client = MlflowClient(tracking_uri=self.uri)
        self._entities = mlflow.entities
        name = experiment or config.output.experiment or config.name or DEFAULT_EXPERIMENT
        found = self.client.get_experiment_by_name(name)
        self.experiment_id = (
            parent.experiment_id if parent
            else found.experiment_id if found
            else self.client.create_experiment(name, artifact_location=artifact_root(self.uri))
        )
        existing = self._existing_run()
        self.previous_status = existing.info.status if existing else None  # None: new run
        self.run_id = existing.info.run_id if existing else self._new_run(
            run_name or config.name, parent.run_id if parent else None
        )
        atomic_write_json(self.folder / RUN_FILE, {
            "run_id": self.run_id, "experiment_id": self.experiment_id, "tracking_uri": self.uri,
        })

    def _existing_run(self) -> Any:
        """The MLflow run this folder logged to before, if it is in this store still."""
        path = self.folder / RUN_FILE
        if not path.is_file():
            return None
        saved = json.loads(path.read_text())
        if saved.get("tracking_uri") != self.uri:
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(saved["run_id"])
        except MlflowException:  # gone from the store: start a new one
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def running(self) -> None:
        """Mark the run as running again (a resumed run, or one logged from its folder)."""
        if self.previous_status not in (None, "RUNNING"):
            self.client.update_run(self.run_id, status="RUNNING")

    def _new_run(self, name: str, parent_id: str | None) -> str:
        tags = {"mlflow.parentRunId": parent_id} if parent_id else {}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        return run.info.run_id

    def forget(self) -> None:
        """A fresh run over an old folder: the next Tracker starts a new MLflow run."""
        (self.folder / RUN_FILE).unlink(missing_ok=True)

    def log_config(self, config: Config) -> None:
        """Every resolved config key as a parameter (a resumed run logs the same values)."""
        logged = self.client.get_run(self.run_id).data.params
        params = [self._entities.Param(k, v) for k, v in config_params(config).items()
                  if k not in logged]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def log_round(self, row: dict) -> None:
        """One metrics.jsonl row, step = its round."""
        step = int(row["round"])
        metrics = [self._entities.Metric(k, v, 0, step) for k, v in round_metrics(row).items()]
        for start in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + BATCH])

    def log_artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def start_run(config: Config, resume: bool, experiment: str | None = None,
              parent: Tracker | None = None) -> Tracker | None:
    """The tracker of one run, or None when `output.tracking` is "none". A fresh run over a
    folder an earlier run left starts a new MLflow run; a resumed one continues its own."""
    if config.output.tracking == "none":
        return None
    mlflow_module()  # a missing extra stops the run before it writes anything
    folder = config.run_dir
    if not resume:
        (folder / RUN_FILE).unlink(missing_ok=True)
    tracker = Tracker(config, folder, experiment, parent)
    tracker.running()
    tracker.log_config(config)
    return tracker


def log_finished(config: Config, experiment: str | None = None,
                 parent: Tracker | None = None) -> None:
    """A finished run folder that this MLflow store does not hold yet (e.g. a sweep cell
    that finished before tracking was turned on) logged from its files: its config, every
    round of metrics.jsonl, its report. A folder already logged here is left as it is."""
    if config.output.tracking == "none":
        return
    from fedmem.files import read_jsonl

    tracker = Tracker(config, config.run_dir, experiment, parent)
    if tracker.previous_status == "FINISHED":
        return
    tracker.running()
    tracker.log_config(config)
    for row in read_jsonl(config.run_dir / "metrics.jsonl"):
        tracker.log_round(row)
    finish_run(tracker, config.run_dir)


def finish_run(tracker: Tracker, run_dir: Path) -> None:
    """Log the finished run's summary, config, report and figures, and close its run."""
    from fedmem.runs.report_files import write_report

    report = write_report(run_dir)  # report.md, report.html and the figures, in the folder
    files = [run_dir / "summary.json", run_dir / "config.json", report.markdown, report.html,
             *report.figures.values()]
    tracker.log_artifacts(files)
    tracker.finish()
