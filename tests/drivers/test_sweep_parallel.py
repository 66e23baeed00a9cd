"""Sweeps run cells concurrently: `fedmem sweep FILE --parallel N` runs each cell in a process
of its own (here, or as a task of the cells' Ray cluster) and leaves the very folder, store
and report the sequential sweep leaves."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fedmem.drivers.deployment import free_port, stop_process_tree
from fedmem.drivers.sweep import SweepError, cluster_address, load_sweep, run_sweep_parallel
from fedmem.runs.store import query
from tests.support.files import write_toml

BIN = Path(sys.executable).parent
# What differs between two runs of one config: when and how long, and where.
VOLATILE = {"run_id", "wall_time_s", "elapsed_s", "seconds", "started", "finished", "path",
            "run_dir", "created", "ingested_at", "timestamp", "s_per_round"}


def _two_cells(folder: Path, tiny_raw: dict, **federation) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    base = copy.deepcopy(tiny_raw)
    base.update(mode="centralized", output={"dir": str(folder / "runs")})
    base["federation"] = {**base["federation"], "rounds": 1, **federation}
    write_toml(folder / "base.toml", base)
    return write_toml(
        folder / "sweep.toml", {"name": "two", "base": "base.toml", "grid": {"seed": [0, 1]}}
    )


def _stable(value):
    """`value` without the keys that say when, how long or where."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _store(folder: Path, root: Path) -> list[dict]:
    """The store's run rows, timings left out and the test's folder written as <root>."""
    rows = [
        {k: v.replace(str(root), "<root>") if isinstance(v, str) else v for k, v in r.items()}
        for r in query(folder, "runs").to_dict("records")
    ]
    return sorted((_stable(r) for r in rows), key=lambda r: json.dumps(r, sort_keys=True))


def _report(folder: Path) -> str:
    """report.md with its folder written as <folder> and the wall-time column left out."""
    lines, drop = [], None
    for line in (folder / "report.md").read_text().replace(str(folder), "<folder>").split("\n"):
        cells = line.split(" | ")
        if line.startswith("|") and any(c.strip().startswith("wall time") for c in cells):
            drop = next(i for i, c in enumerate(cells) if c.strip().startswith("wall time"))
        if not line.startswith("|"):
            drop = None
        lines.append(" | ".join(c for i, c in enumerate(cells) if i != drop))
    return "\n".join(lines)


def _sweep_command(*args: str) -> None:
    """`fedmem sweep ...` in a process of its own, as a user runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "fedmem.drivers.cli", "sweep", *args],
        capture_output=True, text=True, timeout=1500, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _metrics(cell_dir: Path) -> list[dict]:
    return [_stable(json.loads(x)) for x in (cell_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_parallel_cells_leave_the_folder_store_and_report_of_the_sequential_sweep(
    tmp_path, tiny_raw
):
    sequential = _two_cells(tmp_path / "a", tiny_raw)
    parallel = _two_cells(tmp_path / "b", tiny_raw)
    _sweep_command(str(sequential))
    _sweep_command(str(parallel), "--parallel", "2")
    a, b = load_sweep(sequential), load_sweep(parallel)
    files = sorted(p.relative_to(a.folder) for p in a.folder.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b.folder) for p in b.folder.rglob("*") if p.is_file())
    assert _store(a.folder, tmp_path / "a") == _store(b.folder, tmp_path / "b")
    for cell_a, cell_b in zip(a.cells, b.cells, strict=True):
        assert _metrics(cell_a.run_dir) == _metrics(cell_b.run_dir)
    assert _report(a.folder) == _report(b.folder)
    # A second parallel sweep finds every cell finished and runs none.
    assert run_sweep_parallel(load_sweep(parallel), 2) == []


@pytest.mark.slow
def test_parallel_cells_run_as_tasks_of_the_cells_ray_cluster(tmp_path, tiny_raw):
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as ray_dir:
        head = subprocess.Popen(
            [
                str(BIN / "ray"), "start", "--head", "--block", f"--port={port}",
                "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={ray_dir}",
                "--disable-usage-stats",
            ],
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            path = _two_cells(tmp_path, tiny_raw, ray_address=f"127.0.0.1:{port}")
            done = subprocess.run(
                [sys.executable, "-m", "fedmem.drivers.cli", "sweep", str(path), "--parallel",
                 "2"],
                capture_output=True, text=True, timeout=600, check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            logs = list(Path(ray_dir).glob("session_*/logs/worker-*.out"))
        finally:
            stop_process_tree([head])
    sweep = load_sweep(path)
    assert all((c.run_dir / "summary.json").is_file() for c in sweep.cells)
    assert len(query(sweep.folder, "runs")) == 2
    assert logs, "no Ray worker ran"


def test_parallel_needs_one_or_more_cells_at_a_time(tmp_path, tiny_raw):
    with pytest.raises(SweepError, match="--parallel 0"):
        run_sweep_parallel(load_sweep(_two_cells(tmp_path, tiny_raw)), 0)


def test_a_parallel_sweep_runs_on_one_cluster(tmp_path, tiny_raw):
    path = _two_cells(tmp_path, tiny_raw)
    spec = json.loads(json.dumps({"name": "two", "base": "base.toml",
                                  "grid": {"seed": [0],
                                           "federation.ray_address": ["a:1", "b:2"]}}))
    mixed = load_sweep(write_toml(path.parent / "mixed.toml", spec))
    with pytest.raises(SweepError, match="federation.ray_address differs between cells"):
        cluster_address(mixed)
    assert cluster_address(load_sweep(path)) == ""
