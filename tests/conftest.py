"""Shared fixtures: tiny sizes everywhere, and a cache folder private to the test session."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.support.configs import TINY_OVERRIDES
from tests.support.files import write_toml

# Built artefacts (tokenizer, warm-started base) go to a cache inside the checkout, shared by
# the test session's processes (Ray workers included) and ignored by git.
os.environ.setdefault(
    "FEDMEM_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "fedmem-tests")
)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

@pytest.fixture
def tiny_raw(tmp_path) -> dict:
    """A nested config mapping for a tiny, fast run writing under tmp_path."""
    import copy

    raw = copy.deepcopy(TINY_OVERRIDES)
    raw["name"] = "tiny"
    raw["output"] = {"dir": str(tmp_path / "runs")}
    return raw


# ------------------------------------------------------------------ a finished tiny sweep


TINY_SWEEP = {
    "name": "tiny-sweep",
    "base": "base.toml",
    "grid": {"model.finetuning": ["full", "lora"], "goldfish.enabled": [False, True],
             "seed": [0, 1]},
}


@pytest.fixture(scope="session")
def finished_sweep(tmp_path_factory):
    """A 2x2 grid x 2 seeds of tiny centralized runs, interrupted by a failure injected in the
    middle of its 4th cell (after round 0's checkpoint), then resumed. Yields what both
    attempts did."""
    import copy
    import json
    from types import SimpleNamespace

    from fedmem.drivers.api import train_and_audit
    from fedmem.drivers.sweep import load_sweep, run_sweep
    from fedmem.runs.store import query

    folder = tmp_path_factory.mktemp("sweep")
    base = copy.deepcopy(TINY_OVERRIDES)
    base.update(name="tiny", mode="centralized", output={"dir": str(folder / "runs")})
    base["federation"] = {**base["federation"], "rounds": 1}
    write_toml(folder / "base.toml", base)
    sweep = load_sweep(write_toml(folder / "sweep.toml", TINY_SWEEP))

    class Interrupted(Exception):
        pass

    def failing_fourth_cell(config, on_round, resume):
        def on_round_then_fail(row):
            if row["round"] == 0:
                raise Interrupted("killed in the middle of a cell")

        fail = config.name == sweep.cells[3].name
        train_and_audit(config, on_round_then_fail if fail else on_round, resume=resume)

    with pytest.raises(Interrupted):
        run_sweep(sweep, failing_fourth_cell)
    finished_first = sorted(c.name for c in sweep.cells if (c.run_dir / "summary.json").exists())
    partial = sweep.cells[3].run_dir
    partial_rounds = [json.loads(line)["round"] for line in
                      (partial / "metrics.jsonl").read_text().splitlines()]
    partial_finished = (partial / "summary.json").exists()
    (partial / "left-over-from-the-killed-run").write_text("x")
    mtimes = {n: (folder / "runs" / "tiny-sweep" / n / "summary.json").stat().st_mtime_ns
              for n in finished_first}

    partial_round0 = (partial / "metrics.jsonl").read_text().splitlines()[0]
    rerun: list[str] = []
    resumed: list[str] = []

    def counting(config, on_round, resume):
        rerun.append(config.name)
        if resume:
            resumed.append(config.name)
        train_and_audit(config, on_round, resume=resume)

    returned = run_sweep(sweep, counting)
    yield SimpleNamespace(
        sweep=sweep,
        finished_first=finished_first,
        partial_rounds=partial_rounds,
        partial_finished=partial_finished,
        partial_round0=partial_round0,
        resumed=resumed,
        mtimes=mtimes,
        rerun=rerun,
        returned=returned,
        runs_after_sweep=query(sweep.folder, "runs"),
    )


@pytest.fixture(scope="session")
def sweep_report(finished_sweep):
    """The finished sweep's report (report.md, report.html, figures), written once."""
    from fedmem.runs.report_files import write_report

    return write_report(finished_sweep.sweep.folder)


# ------------------------------------------- a finished tiny run, tracked, through the API


@pytest.fixture(scope="session")
def tracked_run(tmp_path_factory):
    """A tiny centralized run through `fedmem.api.run` with MLflow tracking into a SQLite
    store, interrupted after round 0 (a progress callback raises), then resumed to its end.
    Yields the config, the result, the resumed call's events and the store's URI. Shared by
    the API and tracking tests."""
    import copy
    from types import SimpleNamespace

    from fedmem import api
    from fedmem.config import build_config

    folder = tmp_path_factory.mktemp("tracked")
    raw = copy.deepcopy(TINY_OVERRIDES)
    raw.update(name="tracked", mode="centralized")
    raw["federation"] = {**raw["federation"], "rounds": 1}
    raw["output"] = {"dir": str(folder / "runs"), "tracking": "mlflow"}
    config = build_config(raw)

    class Interrupted(Exception):
        pass

    def stop_after_round_0(event):
        if isinstance(event, api.RoundAudited) and event.round == 0:
            raise Interrupted("killed after round 0")

    with pytest.raises(Interrupted):
        api.run(config, stop_after_round_0)
    events: list = []
    resumed = api.resume_config(config.run_dir)
    result = api.run(resumed, events.append, resume=True)
    yield SimpleNamespace(
        config=config, result=result, events=events,
        uri=f"sqlite:///{(folder / 'runs' / 'mlflow.db').resolve()}",
    )


# ------------------------------------------------------------------ parallel test workers


# Tests that start a `ray start --head` cluster or Flower's SuperLink on fixed local ports:
# one after another, on one worker. (Simulations start Ray instances of their own, which
# never join such a cluster: fedmem.drivers.simulation asks Ray for address="local".)
MACHINE_SERVICES = ("test_ray_cluster.py", "test_sweep_parallel.py", "test_deployment.py",
                    "test_flwr_run.py")


# The groups that take longest (end-to-end runs, Ray, Flower, notebooks, the browser),
# longest first: scheduled first, so that two workers finish together instead of one
# waiting on a long group handed out last. Every other group follows, largest first.
LONG_GROUPS = (
    "machine-services", "finished_sweep", "tests/examples/test_notebook.py",
    "tests/drivers/test_gpu_script.py", "tests/runs/test_determinism.py",
    "tests/examples/test_docs.py", "tracked_run", "tests/audits/test_dp_audit_runs.py",
    "tests/runs/test_resume.py", "tests/runs/test_report_browser.py",
    "tests/mitigations/test_combinations.py", "tests/drivers/test_per_source_run.py",
    "tests/apps/test_federation.py", "tests/runs/test_external_audit.py",
)


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs `-n auto --dist loadgroup
    --no-loadscope-reorder`) keep each module on one worker, so its module-scoped fixtures
    are built once; every user of a session fixture that runs a sweep or a tracked run on
    one worker, so each runs once; the tests that start machine-wide services one after
    another; and the long groups first (`LONG_GROUPS`)."""
    groups = {}
    for item in items:
        names = getattr(item, "fixturenames", ())
        module = item.nodeid.split("::")[0]
        # Centralized runs, no Ray; sweep_report is built on finished_sweep.
        if "finished_sweep" in names or "sweep_report" in names:
            group = "finished_sweep"
        elif "tracked_run" in names:
            group = "tracked_run"
        elif module.endswith(MACHINE_SERVICES):
            group = "machine-services"
        else:
            group = module
        item.add_marker(pytest.mark.xdist_group(group))
        groups[item.nodeid] = group
    sizes = Counter(groups.values())

    def rank(item):
        group = groups[item.nodeid]
        long = LONG_GROUPS.index(group) if group in LONG_GROUPS else len(LONG_GROUPS)
        return long, -sizes[group], group

    items.sort(key=rank)  # stable: each group keeps its tests' order
