"""Sweeps: one TOML file names a base config and a grid over config keys; each cell is a run.

A sweep file (see configs/sweeps/):

    name = "lora-vs-full"          # sweep folder under the base's output.dir (default: stem)
    base = "../quickstart.toml"    # the base config, relative to the sweep file
    [set]                          # overrides for every cell (dotted keys), optional
    "federation.rounds" = 4
    [grid]                         # crossed: every combination of these values
    "model.finetuning" = ["full", "lora"]
    seed = [0, 1]
    [[zip]]                        # optional: these axes vary together (equal lengths),
    "goldfish.enabled" = [false, true]   # crossed with the grid and with other [[zip]] groups
    "training.lr" = [2e-3, 3e-3]

Cells are the product of the grid axes, then the [[zip]] groups, with `seed` varying fastest;
they run one after another in this process, each a normal run in
`<output.dir>/<sweep>/<cell>/`. A cell whose folder holds `summary.json` (written last) is
finished and skipped; any other cell folder is removed and the cell rerun from scratch. The
`seed` axis is what the report averages over: a cell's *combination* is its other axis values.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmem.config import (
    Config,
    ConfigError,
    build_config,
    config_differences,
    flat_hints,
    parse_override,
    read_config_file,
    read_toml,
    set_dotted,
    to_run_config,
)
from fedmem.files import atomic_write_json

SWEEP_FILE = "sweep.json"
SWEEP_KEYS = {"name", "base", "set", "grid", "zip"}
SEED_KEY = "seed"


class SweepError(ConfigError):
    """A bad sweep file or a sweep folder that does not match it; one line naming file and key."""


@dataclass(frozen=True)
class Cell:
    name: str  # folder name of the cell's run
    combination: str  # its axis values except the seed (what the report groups by)
    values: Mapping[str, Any]  # axis key -> value for this cell
    config: Config

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir


@dataclass(frozen=True)
class Sweep:
    name: str
    path: Path  # the sweep file
    folder: Path  # <output.dir>/<name>
    axes: tuple[str, ...]
    cells: tuple[Cell, ...]


# --------------------------------------------------------------------------- reading


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Read a sweep file, expand its cells and validate every cell's config up front.

    `overrides` (`key=value`, as `--set`) apply to every cell after the file's [set]."""
    path = Path(path)
    spec = read_toml(path, "sweep file")
    if unknown := sorted(set(spec) - SWEEP_KEYS):
        allowed = ", ".join(sorted(SWEEP_KEYS))
        raise SweepError(f"{path}: unknown key '{unknown[0]}' (allowed: {allowed})")
    if not isinstance(spec.get("base"), str):
        raise SweepError(f"{path}: base: give the base config file, e.g. base = \"../x.toml\"")
    base_path = (path.parent / spec["base"]).resolve()
    if not base_path.is_file():
        raise SweepError(f"{path}: base = {spec['base']!r}: no such file {base_path}")
    base = read_config_file(base_path)
    name = spec.get("name", path.stem)
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise SweepError(f"{path}: name = {name!r}: must be a plain folder name")

    hints = flat_hints()
    fixed = _table(path, spec, "set")
    for key, value in fixed.items():
        _check_key(path, f"set.{key}", key, hints)
        set_dotted(base, key, value)
    for item in overrides:
        key, value = parse_override(item)
        _check_key(path, f"--set {key}", key, hints)
        set_dotted(base, key, value)

    groups = _axis_groups(path, spec, hints)
    axes = tuple(key for group in groups for key in group[0])
    if not groups:
        raise SweepError(f"{path}: grid: give at least one axis, e.g. seed = [0, 1]")
    try:
        parent = build_config(base)
    except ConfigError as err:
        raise SweepError(f"{path}: base config: {err}") from None
    folder = Path(parent.output.dir) / name
    short = _short_names(axes)

    cells: list[Cell] = []
    for choice in itertools.product(*(rows for _, rows in groups)):
        values = {k: v for (keys, _), row in zip(groups, choice, strict=True)
                  for k, v in zip(keys, row, strict=True)}
        cell_name = ",".join(f"{short[k]}={_label(v)}" for k, v in values.items())
        combination = ",".join(
            f"{short[k]}={_label(v)}" for k, v in values.items() if k != SEED_KEY
        ) or name
        raw = json.loads(json.dumps(base))  # deep copy, plain types
        for key, value in values.items():
            set_dotted(raw, key, value)
        raw["name"] = cell_name
        raw.setdefault("output", {})["dir"] = str(folder)
        try:
            config = build_config(raw)
        except ConfigError as err:
            raise SweepError(f"{path}: cell {cell_name}: {err}") from None
        cells.append(Cell(cell_name, combination, values, config))
    if len({c.name for c in cells}) != len(cells):
        raise SweepError(f"{path}: grid: two cells share a name; axis values must differ")
    return Sweep(name, path, folder, axes, tuple(cells))


def _table(path: Path, spec: Mapping, key: str) -> dict:
    table = spec.get(key, {})
    if not isinstance(table, dict):
        raise SweepError(f"{path}: {key}: expected a table of dotted config keys")
    return table


def _check_key(path: Path, where: str, key: str, hints: Mapping[str, Any]) -> None:
    if key not in hints:
        raise SweepError(f"{path}: {where}: not a config key (e.g. model.finetuning, seed)")


def _axis_groups(path: Path, spec: Mapping, hints: Mapping) -> list[tuple[tuple[str, ...], list]]:
    """[(keys, rows)]: a grid axis is one key with its values; a zip group is several keys
    whose i-th values form the i-th row."""
    groups: list[tuple[tuple[str, ...], list]] = []
    seen: set[str] = set()

    def values_of(where: str, key: str, values: Any) -> list:
        _check_key(path, where, key, hints)
        if key in seen:
            raise SweepError(f"{path}: {where}: axis given twice")
        if key in ("name", "output.dir"):
            raise SweepError(f"{path}: {where}: the sweep sets each cell's name and folder")
        seen.add(key)
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: {where}: give a non-empty list of values")
        return values

    for key, values in _table(path, spec, "grid").items():
        groups.append(((key,), [(v,) for v in values_of(f"grid.{key}", key, values)]))
    zips = spec.get("zip", [])
    zips = [zips] if isinstance(zips, dict) else zips
    if not isinstance(zips, list) or not all(isinstance(z, dict) for z in zips):
        raise SweepError(f"{path}: zip: expected [[zip]] tables of equal-length lists")
    for i, table in enumerate(zips):
        columns = {k: values_of(f"zip[{i}].{k}", k, v) for k, v in table.items()}
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise SweepError(f"{path}: zip[{i}]: lists must have equal lengths, got {lengths}")
        if columns:
            groups.append((tuple(columns), list(zip(*columns.values(), strict=True))))
    # The seed varies fastest and is named last: the seeds of a combination sit together.
    return sorted(groups, key=lambda group: SEED_KEY in group[0])


def _short_names(axes: tuple[str, ...]) -> dict[str, str]:
    """The last part of each key (the section for `x.enabled`), or the whole key where two
    axes would share a short name."""
    leaf = {k: k.rsplit(".", 2)[-2] if k.endswith(".enabled") else k.rsplit(".", 1)[-1]
            for k in axes}
    counts = {v: list(leaf.values()).count(v) for v in leaf.values()}
    return {k: leaf[k] if counts[leaf[k]] == 1 else k for k in axes}


def _label(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "+".join(_label(v) for v in value)
    return str(value).replace("/", "_")


# --------------------------------------------------------------------------- running


def cell_is_finished(cell: Cell) -> bool:
    """Finished = summary.json exists (a run writes it last) for this very config.

    A finished folder made from another config raises: the sweep file changed under it."""
    folder = cell.run_dir
    if not (folder / "summary.json").exists():
        return False
    try:
        saved = json.loads((folder / "config.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if diff := _first_difference(saved, cell.config):
        raise SweepError(
            f"{folder}: finished with another config ({diff}); remove that folder or rename "
            "the sweep"
        )
    return True


def cell_can_resume(cell: Cell) -> bool:
    """An unfinished cell folder made from this very config, with a complete checkpoint."""
    from fedmem.runs.folder import last_complete_round

    try:
        saved = json.loads((cell.run_dir / "config.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if _first_difference(saved, cell.config) is not None:
        return False
    return last_complete_round(cell.run_dir) is not None


def _first_difference(saved: dict, wanted: Config) -> str | None:
    differs = config_differences(saved, wanted)
    if not differs:
        return None
    key, was, now = differs[0]
    return f"{key}: {was!r} != {now!r}"


# (config, on_round, resume) -> trains and audits one cell; resume continues its folder
RunCell = Callable[[Config, Callable[[dict], None] | None, bool], Any]


@dataclass
class SweepEvents:
    """Callbacks for progress display; all optional."""

    cell_started: Callable[[int, Cell], None] | None = None
    round_done: Callable[[dict], None] | None = None
    cell_done: Callable[[int, Cell, bool], None] | None = None  # (index, cell, skipped)


def write_sweep_file(sweep: Sweep) -> None:
    """`sweep.json` in the sweep folder: the axes and every cell, so the folder describes
    itself to `fedmem report` and `fedmem ingest`."""
    atomic_write_json(
        sweep.folder / SWEEP_FILE,
        {
            "name": sweep.name,
            "file": str(sweep.path),
            "axes": list(sweep.axes),
            "cells": [
                {
                    "name": c.name,
                    "combination": c.combination,
                    "values": {k: to_run_config(c.config)[k] for k in c.values},
                }
                for c in sweep.cells
            ],
        },
    )


def run_sweep(sweep: Sweep, run_cell: RunCell, events: SweepEvents | None = None) -> list[str]:
    """Run every unfinished cell in order; returns the names of the cells run now.

    `run_cell(config, on_round, resume)` trains and audits one config (as `fedmem run` does,
    with `--resume` when `resume`). An exception stops the sweep; next time the interrupted
    cell continues after its last complete round, or reruns from scratch when it has none
    (or was made from another config)."""
    events = events or SweepEvents()
    write_sweep_file(sweep)
    ran: list[str] = []
    for index, cell in enumerate(sweep.cells):
        if _skip_finished(index, cell, events):
            continue
        if events.cell_started:
            events.cell_started(index, cell)
        run_one_cell(cell, run_cell, events.round_done)
        ran.append(cell.name)
        if events.cell_done:
            events.cell_done(index, cell, False)
    return ran


def _skip_finished(index: int, cell: Cell, events: SweepEvents) -> bool:
    from fedmem.runs.store import ensure_ingested

    if not cell_is_finished(cell):
        return False
    ensure_ingested(cell.run_dir)  # a run killed between summary and store write
    if events.cell_done:
        events.cell_done(index, cell, True)
    return True


def run_one_cell(cell: Cell, run_cell: RunCell, on_round=None) -> None:
    """One unfinished cell: resumed after its last complete round, else rerun from scratch.
    The sequential loop and each process of a parallel sweep (`fedmem sweep --cell`) alike."""
    resume = cell_can_resume(cell)
    if cell.run_dir.exists() and not resume:
        shutil.rmtree(cell.run_dir)
    run_cell(cell.config, on_round, resume)
    if not (cell.run_dir / "summary.json").exists():
        raise RuntimeError(f"cell {cell.name} ended without writing summary.json")


def find_cell(sweep: Sweep, name: str) -> Cell:
    for cell in sweep.cells:
        if cell.name == name:
            return cell
    raise SweepError(f"{sweep.path}: no cell named {name!r}")


# --------------------------------------------------------------------------- in parallel


def cell_command(sweep: Sweep, cell: Cell, overrides: list[str] | tuple[str, ...]) -> list[str]:
    """The command that runs one cell in a process of its own: `fedmem sweep FILE --cell
    NAME`, with the sweep's `--set` overrides, so the cell's config is resolved exactly as
    in the parent."""
    command = [sys.executable, "-m", "fedmem.drivers.cli", "sweep", str(sweep.path.resolve())]
    for item in overrides:
        command += ["--set", item]
    return [*command, "--cell", cell.name]


def run_cell_process(command: list[str], cwd: str) -> None:
    """Run one cell's command; a failure raises with the last lines of its output."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(command[-2:])} failed ({done.returncode}):\n{tail}")


def cluster_address(sweep: Sweep) -> str:
    """The Ray cluster the sweep's cells run on (`federation.ray_address`), "" for none; all
    cells must name the same one."""
    addresses = {cell.config.federation.ray_address for cell in sweep.cells}
    if len(addresses) > 1:
        raise SweepError(
            f"{sweep.path}: federation.ray_address differs between cells ({sorted(addresses)}); "
            "a parallel sweep runs on one cluster"
        )
    return addresses.pop()


# CPUs a cell's own process holds on a cluster: the ServerApp's audits and the Ray driver.
# Its clients hold federation.client_cpus / client_gpus each, as actors of the same cluster.
CELL_CPUS = 1.0


def ray_launcher(address: str) -> Callable[[list[str], str], Any]:
    """Runs each cell's command as a Ray task of the cluster at `address` (CELL_CPUS each),
    on whichever node Ray places it: the sweep folder must be on a filesystem every node
    shares, as for the cells' own clients."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    task = ray.remote(num_cpus=CELL_CPUS, num_gpus=0)(run_cell_process)

    def launch(command: list[str], cwd: str) -> None:
        ray.get(task.remote(command, cwd))

    return launch


def run_sweep_parallel(
    sweep: Sweep,
    parallel: int,
    overrides: list[str] | tuple[str, ...] = (),
    events: SweepEvents | None = None,
    launch: Callable[[list[str], str], Any] | None = None,
) -> list[str]:
    """Run the unfinished cells `parallel` at a time, each in a process of its own (`fedmem
    sweep FILE --cell NAME`): a subprocess here, or, when the cells set
    `federation.ray_address`, a Ray task of that cluster. Skip, resume and the cells'
    folders and store rows are those of `run_sweep`; the cells run now are returned in the
    sweep's order. A failed cell does not stop the others; the first failure is raised
    after they end, and the next sweep resumes it as `run_sweep` would."""
    if parallel < 1:
        raise SweepError(f"--parallel {parallel}: give 1 or more cells at a time")
    events = events or SweepEvents()
    write_sweep_file(sweep)
    if launch is None:
        address = cluster_address(sweep)
        launch = ray_launcher(address) if address else run_cell_process
    pending = [(i, c) for i, c in enumerate(sweep.cells) if not _skip_finished(i, c, events)]
    ran: list[str] = []
    failures: list[BaseException] = []
    cwd = str(Path.cwd())
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {}
        for index, cell in pending:
            if events.cell_started:
                events.cell_started(index, cell)
            futures[pool.submit(launch, cell_command(sweep, cell, overrides), cwd)] = (
                index, cell
            )
        for future in as_completed(futures):
            index, cell = futures[future]
            if (error := future.exception()) is not None:
                failures.append(error)
                continue
            if not (cell.run_dir / "summary.json").exists():
                failures.append(RuntimeError(f"cell {cell.name} ended without summary.json"))
                continue
            ran.append(cell.name)
            if events.cell_done:
                events.cell_done(index, cell, False)
    if failures:
        raise failures[0]
    order = {cell.name: i for i, cell in enumerate(sweep.cells)}
    return sorted(ran, key=order.__getitem__)


def describe_cells(sweep: Sweep) -> list[dict]:
    """One row per cell for `--dry-run`: name and status."""
    rows = []
    for cell in sweep.cells:
        if cell_is_finished(cell):
            status = "done"
        elif cell_can_resume(cell):
            status = "partial (resumes)"
        else:
            status = "partial (reruns)" if cell.run_dir.exists() else "to run"
        rows.append({"cell": cell.name, "status": status})
    return rows

