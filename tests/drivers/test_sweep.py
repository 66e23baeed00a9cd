"""Sweeps: a grid of configs expanded, validated up front, run cell by cell and resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedmem.config import load_config, to_dict
from fedmem.drivers.cli import main
from fedmem.drivers.sweep import SweepError, load_sweep
from tests.support.files import write_toml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def base_file(tmp_path, tiny_raw) -> Path:
    return write_toml(tmp_path / "base.toml", {**tiny_raw, "mode": "centralized"})


def _sweep(tmp_path, **spec) -> Path:
    return write_toml(tmp_path / "s.toml", {"name": "s", "base": "base.toml", **spec})


def test_grid_is_crossed_and_zipped_axes_vary_together(tmp_path, base_file):
    path = _sweep(
        tmp_path,
        grid={"goldfish.enabled": [False, True]},
        zip={"model.finetuning": ["full", "lora"], "training.lr": [0.002, 0.005]},
    )
    sweep = load_sweep(path)
    pairs = [(c.config.goldfish.enabled, c.config.model.finetuning, c.config.training.lr)
             for c in sweep.cells]
    assert pairs == [(False, "full", 0.002), (False, "lora", 0.005),
                     (True, "full", 0.002), (True, "lora", 0.005)]
    assert sweep.cells[1].name == "goldfish=false,finetuning=lora,lr=0.005"


def test_seed_varies_fastest_and_is_left_out_of_the_combination(tmp_path, base_file):
    sweep = load_sweep(_sweep(tmp_path, grid={"seed": [0, 1], "lora.rank": [4, 8]}))
    assert [c.name for c in sweep.cells] == ["rank=4,seed=0", "rank=4,seed=1",
                                             "rank=8,seed=0", "rank=8,seed=1"]
    assert [c.combination for c in sweep.cells] == ["rank=4", "rank=4", "rank=8", "rank=8"]


def test_each_cell_is_a_run_folder_inside_the_sweep_folder(tmp_path, base_file, tiny_raw):
    sweep = load_sweep(_sweep(tmp_path, grid={"seed": [3]}))
    cell = sweep.cells[0]
    assert cell.run_dir == Path(tiny_raw["output"]["dir"]) / "s" / "seed=3"
    assert cell.config.seed == 3


def test_set_and_command_line_overrides_apply_to_every_cell(tmp_path, base_file):
    path = _sweep(tmp_path, set={"federation.rounds": 3}, grid={"seed": [0, 1]})
    sweep = load_sweep(path, ["training.lr=0.01"])
    assert {(c.config.federation.rounds, c.config.training.lr) for c in sweep.cells} == {(3, 0.01)}


def test_unknown_grid_key_names_the_sweep_file_and_key(tmp_path, base_file):
    path = _sweep(tmp_path, grid={"model.finetunin": ["full"]})
    with pytest.raises(SweepError, match=r"s\.toml: grid\.model\.finetunin: not a config key"):
        load_sweep(path)


def test_an_invalid_cell_is_rejected_before_anything_runs(tmp_path, base_file, tiny_raw):
    path = _sweep(tmp_path, grid={"model.finetuning": ["full", "qlora"]})
    assert main(["sweep", str(path)]) == 2
    with pytest.raises(
        SweepError, match=r"s\.toml: cell finetuning=qlora: model\.finetuning = 'qlora'"
    ):
        load_sweep(path)
    assert not Path(tiny_raw["output"]["dir"]).exists()


def test_zipped_lists_must_have_equal_lengths(tmp_path, base_file):
    path = _sweep(tmp_path, zip={"model.finetuning": ["full", "lora"], "training.lr": [0.1]})
    with pytest.raises(SweepError, match=r"zip\[0\]: lists must have equal lengths"):
        load_sweep(path)


def test_dry_run_lists_the_cells_and_runs_nothing(tmp_path, base_file, tiny_raw, capsys):
    path = _sweep(tmp_path, grid={"seed": [0, 1]})
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "seed=0" in out and "seed=1" in out and out.count("to run") == 2
    assert not Path(tiny_raw["output"]["dir"]).exists()


def test_a_finished_cell_from_another_config_is_refused(tmp_path, base_file):
    sweep = load_sweep(_sweep(tmp_path, grid={"seed": [0]}))
    folder = sweep.cells[0].run_dir
    folder.mkdir(parents=True)
    other = to_dict(load_config(base_file, ["training.lr=0.5"]))
    (folder / "config.json").write_text(json.dumps(other))
    (folder / "summary.json").write_text("{}")
    from fedmem.drivers.sweep import cell_is_finished

    with pytest.raises(SweepError, match=r"another config \(training\.lr"):
        cell_is_finished(sweep.cells[0])


def test_every_sweep_file_in_configs_expands_and_validates():
    files = sorted((REPO / "configs" / "sweeps").glob("*.toml"))
    assert files
    for path in files:
        assert load_sweep(path).cells


# ------------------------------------------------------------ the interrupted tiny sweep


def test_the_interruption_left_three_finished_cells_and_a_partial_one(finished_sweep):
    names = [c.name for c in finished_sweep.sweep.cells]
    assert finished_sweep.finished_first == sorted(names[:3])
    assert finished_sweep.partial_rounds == [0]  # audited, then killed before summary.json
    assert not finished_sweep.partial_finished


def test_resuming_runs_only_the_missing_cells(finished_sweep):
    names = [c.name for c in finished_sweep.sweep.cells]
    assert len(names) == 8
    assert finished_sweep.rerun == names[3:] == finished_sweep.returned


def test_resuming_leaves_finished_cells_untouched(finished_sweep):
    for name, mtime in finished_sweep.mtimes.items():
        summary = finished_sweep.sweep.folder / name / "summary.json"
        assert summary.stat().st_mtime_ns == mtime


def test_the_interrupted_cell_continues_after_its_last_checkpoint(finished_sweep):
    folder = finished_sweep.sweep.cells[3].run_dir
    assert finished_sweep.resumed == [finished_sweep.sweep.cells[3].name]
    assert (folder / "left-over-from-the-killed-run").exists()  # the folder was kept
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert lines[0] == finished_sweep.partial_round0  # round 0 was not redone
    assert [json.loads(line)["round"] for line in lines] == [0, 1]


def test_every_cell_ends_with_a_complete_run_folder(finished_sweep):
    for cell in finished_sweep.sweep.cells:
        summary = json.loads((cell.run_dir / "summary.json").read_text())
        assert summary["finetuning"] == cell.config.model.finetuning
        assert json.loads((cell.run_dir / "config.json").read_text()) == to_dict(cell.config)


def test_a_second_run_of_a_finished_sweep_runs_nothing(finished_sweep, capsys):
    assert main(["sweep", str(finished_sweep.sweep.path)]) == 0
    out = capsys.readouterr().out
    assert "0 cells run now, 8 already finished" in out
