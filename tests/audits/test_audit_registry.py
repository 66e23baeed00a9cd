"""The audit registry: every audit is one module of fedmem.audits declaring AUDIT, and the
per-round audit, the recorder, the store, the terminal and the report read it from there, so
an audit they have never heard of is run, written, stored and shown."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from rich.console import Console

import fedmem.audits
from fedmem.audits import registry
from fedmem.audits.declaration import (
    Audit,
    AuditPart,
    Column,
    ReplicaColumn,
    ReportColumn,
    dig,
)
from fedmem.audits.model_audit import audit_model
from fedmem.config import build_config
from fedmem.files import read_jsonl
from fedmem.models.loading import build_model
from fedmem.runs.recorder import RunRecorder
from fedmem.runs.report import round_line, summary_table
from fedmem.runs.report_files import write_report
from fedmem.runs.store import query

ROOT = Path(__file__).resolve().parents[2]


def test_every_module_declaring_an_audit_is_registered_under_its_own_name():
    declared = {
        info.name
        for info in pkgutil.iter_modules(fedmem.audits.__path__)
        if hasattr(importlib.import_module(f"fedmem.audits.{info.name}"), "AUDIT")
    }
    names = [a.name for a in registry.audits()]
    assert sorted(names) == sorted(declared)
    assert {"extraction", "utility", "membership", "exposure", "canary_loss_gap"} <= set(names)


def test_names_output_files_columns_tables_and_figures_are_unique():
    audits = registry.audits()
    for values in (
        [a.name for a in audits],
        [a.output for a in audits if a.output],
        [c.name for a in audits for c in a.columns],
        [t.name for a in audits for t in a.tables],
        [f.name for a in audits for f in a.figures],
    ):
        assert len(values) == len(set(values)), values
    assert registry.outputs() == {
        "extraction": "extraction.jsonl",
        "membership": "membership.jsonl",
        "exposure": "exposure.jsonl",
    }


def test_audits_run_and_show_in_their_declared_order_with_extraction_the_headline():
    assert [a.name for a in registry.audits()] == [
        "extraction", "utility", "membership", "exposure", "canary_loss_gap",
        "federated_attack"]
    assert registry.headline().name == "extraction"


def test_importing_the_registry_store_and_terminal_loads_no_model_library():
    """The store and reports read the declarations without torch, transformers or flwr."""
    code = (
        "import sys\n"
        "from fedmem.audits import registry\n"
        "from fedmem.runs import report, store\n"
        "registry.audits(); store.schema(); store.tables()\n"
        "heavy = {'torch', 'transformers', 'flwr', 'peft', 'opacus'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_two_audits_with_one_name_are_refused(monkeypatch):
    twin = ModuleType("fedmem.audits.twin")
    twin.AUDIT = Audit("exposure", 99, lambda config: True, lambda config, model: AuditPart({}))
    real = registry.audit_modules()
    monkeypatch.setattr(registry, "audit_modules", lambda: [*real, twin])
    registry.audits.cache_clear()
    try:
        with pytest.raises(registry.RegistryError, match="audit name 'exposure'"):
            registry.audits()
    finally:
        registry.audits.cache_clear()


# ------------------------------------------------------------- an audit no reader knows


def _count_parameters(config, model) -> AuditPart:
    """A stand-in audit: one number, one row per parameter tensor."""
    tensors = list(model.parameters())
    rows = [{"tensor": i, "numel": t.numel()} for i, t in enumerate(tensors)]
    metrics = {"tensors": len(tensors), "by_replicas": {"1": 0.25, "4": 0.75}}
    return AuditPart({"parameter_count": metrics}, rows)


FAKE = Audit(
    name="parameter_count",
    order=99,
    enabled=lambda config: True,
    run=_count_parameters,
    output="parameter_count.jsonl",
    columns=(Column("parameter_tensors", lambda row: dig(row, "parameter_count", "tensors"),
                    report=ReportColumn("parameter tensors", 1.0, 0)),),
    round_line="tensors {parameter_tensors}",
    by_replicas=(ReplicaColumn(
        "tensor share", lambda row, r: dig(row, "parameter_count", "by_replicas", r), "{:.2f}"),),
)


@pytest.fixture
def with_fake_audit(monkeypatch):
    """The registry with one more audit module, as if fedmem/audits/parameter_count.py
    existed; no reader is edited."""
    module = ModuleType("fedmem.audits.parameter_count")
    module.AUDIT = FAKE
    real = registry.audit_modules()
    monkeypatch.setattr(registry, "audit_modules", lambda: [*real, module])
    registry.audits.cache_clear()
    yield FAKE
    registry.audits.cache_clear()


@pytest.fixture
def cheap_config(tiny_raw):
    """Only the cheap real audits (extraction, utility, loss gap) beside the fake one."""
    raw = {**tiny_raw, "mode": "centralized"}
    raw["attack"] = {**tiny_raw["attack"], "exposure": {"enabled": False},
                     "membership": {"enabled": False}}
    return build_config(raw)


def test_a_registered_audit_is_run_by_audit_model(with_fake_audit, cheap_config):
    model = build_model(cheap_config)
    audit = audit_model(cheap_config, model, vantage="client-0")
    n = len(list(model.parameters()))
    assert audit.metrics["parameter_count"]["tensors"] == n
    assert len(audit.rows["parameter_count"]) == n
    assert {r["vantage"] for r in audit.rows["parameter_count"]} == {"client-0"}
    assert list(audit.metrics)[-1] == "parameter_count"  # after every audit of lower order


def test_a_registered_audit_is_written_stored_and_shown(with_fake_audit, cheap_config):
    config = cheap_config
    recorder = RunRecorder(config)
    recorder.start()
    model = build_model(config)
    rows = [recorder.record(r, model) for r in (0, 1)]
    summary = recorder.finish(model)
    n = len(list(model.parameters()))

    written = read_jsonl(config.run_dir / "parameter_count.jsonl")
    assert len(written) == 2 * n and {r["round"] for r in written} == {0, 1}
    assert summary["before"]["parameter_count"]["tensors"] == n

    for table in ("runs", "rounds"):
        assert set(query(config.run_dir, table)["parameter_tensors"]) == {n}

    assert round_line(rows[1], 2).split("  ")[-2] == f"tensors {n}"
    console = Console(width=300, record=True)
    console.print(summary_table(summary))
    table = console.export_text()
    assert "tensor share" in table and "0.75" in table

    report = write_report(config.run_dir)
    header = report.table[0]
    assert report.table[1][header.index("parameter tensors")] == str(n)
    assert json.loads((config.run_dir / "summary.json").read_text())["final"]["parameter_count"]
