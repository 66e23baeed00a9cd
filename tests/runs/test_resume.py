"""Checkpoint and resume: every round leaves what resuming needs, and a resumed run ends
exactly where the uninterrupted one does."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedmem.audits.model_audit import audit_model
from fedmem.config import build_config, to_dict
from fedmem.drivers.cli import main
from fedmem.files import read_jsonl
from fedmem.models.loading import build_model
from fedmem.runs.folder import (
    RESUME_FILE,
    load_checkpoint,
    round_checkpoint_dir,
    without_measurements,
)
from fedmem.runs.recorder import RunRecorder
from tests.support.files import write_toml
from tests.support.inprocess import run_fedmem_in_process

ROOT = Path(__file__).resolve().parents[2]


def _rows(run_dir: Path) -> list[dict]:
    return [without_measurements(r) for r in read_jsonl(run_dir / "metrics.jsonl")]


def _crash_after(run_dir: Path, last_complete: int) -> None:
    """Leave `run_dir` as a run killed after round `last_complete` would: later rounds'
    checkpoints incomplete (no resume.json), no summary."""
    for folder in (run_dir / "checkpoints").glob("round-*"):
        if int(folder.name.removeprefix("round-")) > last_complete:
            (folder / RESUME_FILE).unlink()
    (run_dir / "summary.json").unlink()


def test_every_round_leaves_a_checkpoint_that_reproduces_its_audit(tiny_raw):
    config = build_config({**tiny_raw, "mode": "centralized"})
    from fedmem.drivers.centralized import run_centralized

    run_centralized(config)
    rows = read_jsonl(config.run_dir / "metrics.jsonl")
    for r in (0, 1, 2):
        folder = round_checkpoint_dir(config.run_dir, r)
        assert json.loads((folder / RESUME_FILE).read_text())["round"] == r
        model = build_model(config, seed=config.seed)
        load_checkpoint(folder, model)
        assert audit_model(config, model).metrics["heldout_loss"] == rows[r]["heldout_loss"]


def test_federated_resume_restores_model_accountants_and_client_dp(tiny_raw, tmp_path):
    """DP-SGD accountants live in each client's node state, which a restarted federation
    loses. Resumed after round 1, rounds 2-3 (epsilon, client-DP facts, the gradient
    canaries' all-iterates audit, every metric) come out as in the uninterrupted run."""
    raw = {
        **tiny_raw,
        "federation": {"num_clients": 2, "rounds": 3},
        "training": {**tiny_raw["training"], "local_steps": 2},
        "dp_sgd": {"enabled": True, "noise_multiplier": 0.8},
        "client_dp": {"enabled": True, "clipping": "client-fixed", "noise_multiplier": 0.1},
    }
    config = build_config(raw)
    run_fedmem_in_process(config)
    uninterrupted = _rows(config.run_dir)
    assert uninterrupted[3]["dp_epsilon_max"] > uninterrupted[1]["dp_epsilon_max"] > 0
    # The gradient canaries' sums over all iterates continue from the checkpoint's.
    assert "auroc" in uninterrupted[3]["dp_audit"]["gradient"]["all_iterates"]

    _crash_after(config.run_dir, last_complete=1)
    run_fedmem_in_process(config, resume=True)
    assert _rows(config.run_dir) == uninterrupted


def test_resume_drops_rows_of_the_round_that_did_not_complete(tiny_raw):
    config = build_config({**tiny_raw, "mode": "centralized"})
    from fedmem.drivers.centralized import run_centralized

    run_centralized(config)
    _crash_after(config.run_dir, last_complete=1)
    (config.run_dir / ".metrics.jsonl.partial").write_text('{"round": 2, "hal')  # killed write
    recorder = RunRecorder(config)
    point = recorder.start(resume=True)
    assert point is not None and point.round == 1
    assert [r["round"] for r in read_jsonl(config.run_dir / "metrics.jsonl")] == [0, 1]
    assert {r["round"] for r in read_jsonl(config.run_dir / "extraction.jsonl")} == {0, 1}
    assert not (config.run_dir / "checkpoints" / "round-002").exists()
    assert not list(config.run_dir.glob(".*"))


def test_a_fresh_run_clears_the_checkpoints_of_an_earlier_one(tiny_raw):
    config = build_config(tiny_raw)
    stale = round_checkpoint_dir(config.run_dir, 7)
    stale.mkdir(parents=True)
    (stale / RESUME_FILE).write_text("{}")
    RunRecorder(config).start()
    assert not (config.run_dir / "checkpoints").exists()


def _saved_run(tiny_raw, tmp_path) -> Path:
    """A run folder as a run killed during round 1 leaves it: config.json, no checkpoint."""
    config = build_config(tiny_raw)
    config.run_dir.mkdir(parents=True)
    (config.run_dir / "config.json").write_text(json.dumps(to_dict(config)))
    return config.run_dir


def test_resume_refuses_a_config_that_differs_naming_the_key(tiny_raw, tmp_path, capsys):
    run_dir = _saved_run(tiny_raw, tmp_path)
    args = ["run", "--resume", str(run_dir), "--set", "federation.rounds=5"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "federation.rounds (5, saved 2)" in err


def test_resume_accepts_the_same_config_given_again(tiny_raw, tmp_path, monkeypatch):
    run_dir = _saved_run(tiny_raw, tmp_path)
    write_toml(tmp_path / "c.toml", tiny_raw)
    resumed = []
    monkeypatch.setattr(
        "fedmem.drivers.cli.run", lambda config, verbose, resume: resumed.append(config)
    )
    assert main(["run", str(tmp_path / "c.toml"), "--resume", str(run_dir)]) == 0
    assert resumed == [build_config(tiny_raw)]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "no config.json there"),
        (lambda d: (d / "config.json").write_text("{not json"), "config.json: Expecting"),
        (lambda d: (d / "config.json").write_text('{"seed": "x"}'), "seed = 'x'"),
    ],
)
def test_resume_of_a_folder_that_is_no_run_fails_in_one_line(tmp_path, capsys, setup, message):
    run_dir = tmp_path / "runs" / "x"
    run_dir.mkdir(parents=True)
    setup(run_dir)
    assert main(["run", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err


def test_resume_of_a_complete_run_is_refused(tiny_raw, tmp_path, capsys):
    run_dir = _saved_run(tiny_raw, tmp_path)
    (run_dir / "summary.json").write_text("{}")
    assert main(["run", "--resume", str(run_dir)]) == 2
    assert "the run is complete" in capsys.readouterr().err


def _cli(config_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "fedmem.drivers.cli", "run", *args]
    if config_path:
        command.insert(4, str(config_path))
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@pytest.mark.slow
def test_a_run_killed_in_round_3_resumes_to_the_uninterrupted_metrics(tiny_raw, tmp_path):
    """SIGKILL a centralized run (a subprocess) as soon as round 2 is complete, i.e. during
    round 3 of 4; `fedmem run --resume` then ends with the uninterrupted run's metrics."""
    raw = {**tiny_raw, "mode": "centralized", "federation": {"num_clients": 2, "rounds": 4}}
    reference = {**raw, "name": "reference"}
    write_toml(tmp_path / "reference.toml", reference)
    write_toml(tmp_path / "killed.toml", {**raw, "name": "killed"})
    assert main(["run", str(tmp_path / "reference.toml")]) == 0  # one torch thread, as below

    run_dir = build_config({**raw, "name": "killed"}).run_dir
    process = _cli(tmp_path / "killed.toml")
    marker = round_checkpoint_dir(run_dir, 2) / RESUME_FILE
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists()
    assert not (round_checkpoint_dir(run_dir, 4) / RESUME_FILE).exists()

    resumed = _cli(None, "--resume", str(run_dir))
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()
    assert _rows(run_dir) == _rows(build_config(reference).run_dir)
    extraction = [r["generated"] for r in read_jsonl(run_dir / "extraction.jsonl")]
    expected = read_jsonl(build_config(reference).run_dir / "extraction.jsonl")
    assert extraction == [r["generated"] for r in expected]


def test_resume_continues_a_run_moved_to_another_folder(tiny_raw, tmp_path):
    config = build_config({**tiny_raw, "mode": "centralized"})
    from fedmem.drivers.centralized import run_centralized

    run_centralized(config)
    finished = _rows(config.run_dir)
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(config.run_dir, moved)
    _crash_after(moved, last_complete=0)
    assert main(["run", "--resume", str(moved)]) == 0
    assert _rows(moved) == finished


def test_run_without_config_or_resume_is_a_one_line_error(capsys):
    assert main(["run"]) == 2
    assert capsys.readouterr().err == (
        "fedmem: error: fedmem run: give a CONFIG file, or --resume RUN_DIR\n"
    )
