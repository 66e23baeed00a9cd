"""fedmem.api: the typed functions the CLI is a layer over, and the DataFrames they read."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedmem import api
from fedmem.config import ConfigError
from fedmem.files import read_jsonl


def test_importing_fedmem_and_its_api_loads_no_torch_flower_or_ray():
    code = (
        "import sys, fedmem, fedmem.api; fedmem.run; "
        "print(sorted(m for m in ('torch', 'flwr', 'ray', 'transformers', 'mlflow') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_fedmem_reexports_the_api_by_name():
    import fedmem

    assert fedmem.run is api.run and fedmem.load_config is api.load_config
    with pytest.raises(AttributeError, match="no_such_name"):
        fedmem.no_such_name  # noqa: B018


def test_load_config_applies_overrides_and_names_a_bad_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('name = "x"\n[federation]\nrounds = 3\n')
    assert api.load_config(path, ["federation.rounds=5"]).federation.rounds == 5
    with pytest.raises(ConfigError, match="federation.roundz"):
        api.load_config(path, ["federation.roundz=5"])


@pytest.mark.slow
def test_a_resumed_run_reports_where_it_continues_then_each_round_then_its_end(tracked_run):
    events = tracked_run.events
    assert isinstance(events[0], api.RunStarted) and events[0].resumed_after == 0
    assert [(e.round, e.rounds) for e in events if isinstance(e, api.RoundAudited)] == [(1, 1)]
    assert isinstance(events[-1], api.RunFinished)
    result = tracked_run.result
    assert result.run_dir == tracked_run.config.run_dir
    assert result.summary == json.loads((result.run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_readers_return_the_store_rows_of_the_run(tracked_run):
    folder = tracked_run.result.run_dir
    assert list(api.runs(folder)["run_id"]) == ["tracked"]
    assert list(api.rounds(folder)["round"]) == [0, 1]
    wide = api.rounds(folder, wide=True)
    assert "extraction.injected.exact_rate" in wide.columns
    extraction = api.extraction(folder)
    assert len(extraction) == len(read_jsonl(folder / "extraction.jsonl"))
    assert set(extraction["replicas"]) >= {1, 4}


@pytest.mark.slow
def test_membership_reads_every_scored_sample_with_its_run(tracked_run):
    folder = tracked_run.result.run_dir
    frame = api.membership(folder)
    rows = read_jsonl(folder / "membership.jsonl")
    assert len(frame) == len(rows) and set(frame["run_id"]) == {"tracked"}
    assert set(frame["round"]) == {0, 1}
