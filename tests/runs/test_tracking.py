"""output.tracking = "mlflow": runs and sweeps logged to a real MLflow store (SQLite, no
server), read back with MLflow's own client."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from fedmem.config import ConfigError, build_config
from fedmem.runs import tracking

mlflow = pytest.importorskip("mlflow")


def _runs(uri: str, experiment: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment])


@pytest.mark.slow
def test_a_resumed_run_is_one_mlflow_run_with_its_config_and_each_round(tracked_run):
    runs = _runs(tracked_run.uri, "tracked")
    assert len(runs) == 1 and runs.loc[0, "status"] == "FINISHED"
    run_id = json.loads((tracked_run.result.run_dir / "mlflow.json").read_text())["run_id"]
    assert runs.loc[0, "run_id"] == run_id
    assert runs.loc[0, "params.training.lr"] == json.dumps(tracked_run.config.training.lr)
    assert runs.loc[0, "params.output.tracking"] == '"mlflow"'
    client = mlflow.MlflowClient(tracked_run.uri)
    history = client.get_metric_history(run_id, "extraction.injected.exact_rate")
    assert sorted(m.step for m in history) == [0, 1]  # round 0 not logged twice on resume
    final = tracked_run.result.summary["final"]
    assert history[-1].value == pytest.approx(final["extraction"]["injected"]["exact_rate"])
    assert "heldout_perplexity" in runs.columns.str.removeprefix("metrics.").tolist()


@pytest.mark.slow
def test_the_summary_report_and_figures_are_artifacts(tracked_run):
    runs = _runs(tracked_run.uri, "tracked")
    client = mlflow.MlflowClient(tracked_run.uri)
    names = {a.path for a in client.list_artifacts(runs.loc[0, "run_id"])}
    assert {"summary.json", "config.json", "report.md", "report.html"} <= names
    assert any(name.endswith(".png") for name in names)
    beside_the_store = (tracked_run.result.run_dir.parent / "mlartifacts").resolve().as_uri()
    assert runs.loc[0, "artifact_uri"].startswith(beside_the_store)


@pytest.mark.slow
def test_a_fresh_run_over_an_old_folder_is_a_new_mlflow_run_and_a_resume_is_not(tracked_run):
    config = tracked_run.config
    saved = (config.run_dir / "mlflow.json").read_text()
    again = tracking.start_run(config, resume=True)
    assert again.run_id == json.loads(saved)["run_id"]
    again.finish()
    fresh = tracking.start_run(config, resume=False)
    assert fresh.run_id != again.run_id
    fresh.client.delete_run(fresh.run_id)  # leave the shared store as the run made it
    (config.run_dir / "mlflow.json").write_text(saved)


def test_without_mlflow_a_tracked_run_is_a_one_line_error_naming_the_extra(
    tiny_raw, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    tiny_raw["output"]["tracking"] = "mlflow"
    with pytest.raises(ConfigError) as err:
        tracking.start_run(build_config(tiny_raw), resume=False)
    assert "\n" not in str(err.value) and "pip install 'fedmem[tracking]'" in str(err.value)
    assert not (tmp_path / "runs").exists()  # refused before anything is written


def test_round_metrics_are_numeric_leaves_under_clean_names():
    row = {"round": 3, "extraction": {"by_replicas": {"4": {"exact_rate": 0.5}}},
           "membership": {"loss": {"auc": float("nan")}}, "note": "text",
           "clients": {"0": {"train_loss": 1.0}}, "weird": {"a:b": 2}}
    assert tracking.round_metrics(row) == {
        "extraction.by_replicas.4.exact_rate": 0.5, "clients.0.train_loss": 1.0,
        "weird.a_b": 2.0,
    }


@pytest.mark.slow
def test_a_sweep_is_a_parent_run_with_its_cells_as_children(finished_sweep, tracked_run,
                                                            tmp_path):
    """The finished tiny sweep (a copy) rerun with tracking on: nothing trains again, each
    cell is logged from its folder as a child of the sweep's run, into the tracked run's
    store given by its URI (output.tracking_uri), as a server's would be."""
    from fedmem import api

    source = finished_sweep.sweep.path.parent
    shutil.copytree(source, tmp_path / "copy", symlinks=True)
    runs_dir = tmp_path / "copy" / "runs"
    result = api.sweep(tmp_path / "copy" / "sweep.toml", [
        f"output.dir={runs_dir}", "output.tracking=mlflow",
        f"output.tracking_uri={tracked_run.uri}",
    ])
    assert result.ran == ()  # every cell had finished: none trained again
    runs = _runs(tracked_run.uri, "tiny-sweep")
    parent = runs[runs["tags.mlflow.runName"] == "tiny-sweep"]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(parent) == 1
    assert sorted(children["tags.mlflow.runName"]) == sorted(
        c.name for c in finished_sweep.sweep.cells)
    assert set(children["tags.mlflow.parentRunId"]) == {parent["run_id"].iloc[0]}
    assert set(runs["status"]) == {"FINISHED"}
    client = mlflow.MlflowClient(tracked_run.uri)
    steps = client.get_metric_history(children["run_id"].iloc[0], "heldout_perplexity")
    assert sorted(m.step for m in steps) == [0, 1]
    api.sweep(tmp_path / "copy" / "sweep.toml", [
        f"output.dir={runs_dir}", "output.tracking=mlflow",
        f"output.tracking_uri={tracked_run.uri}",
    ])
    assert len(_runs(tracked_run.uri, "tiny-sweep")) == len(runs)  # logged once, not twice
