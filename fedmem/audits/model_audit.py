"""The per-round audit of a model: every audit the config enables, from the registry.

Federated and centralized runs call `audit_model` after every round (and on the model before
fine-tuning, round 0), so both modes are measured by the same code; the server also calls it
on each client's returned state when `attack.client_view` is on. Each audit is one module of
`fedmem.audits` declaring `AUDIT` (`fedmem.audits.registry`): a function (config, model) ->
AuditPart over the attacks in `attacks/`, and when the config turns it on. Everything fixed
for a run (targets, candidate rows, the reference model's scores) is built once per config
and cached by the audit modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fedmem import progress
from fedmem.audits import registry
from fedmem.audits.declaration import GLOBAL, AuditPart, client_vantage

# Used by `benchmarks/speed_ratios.py`, which times extraction on the run's own targets.
from fedmem.audits.extraction import decoding_for, extraction_targets

if TYPE_CHECKING:
    import torch

    from fedmem.config import Config

__all__ = [
    "GLOBAL",
    "AuditPart",
    "RoundAudit",
    "audit_model",
    "client_vantage",
    "decoding_for",
    "extraction_targets",
]


@dataclass(frozen=True)
class RoundAudit:
    metrics: dict  # aggregated numbers for metrics.jsonl
    rows: dict[str, list[dict]] = field(default_factory=dict)  # audit name -> per-item rows
    roc: dict = field(default_factory=dict)  # score -> population -> {"fpr", "tpr"}


def audit_model(config: Config, model: torch.nn.Module, vantage: str = GLOBAL) -> RoundAudit:
    """Run every enabled audit on `model`, seen from `vantage`, in registry order."""
    metrics: dict = {"vantage": vantage}
    rows: dict[str, list[dict]] = {}
    curves: dict = {}
    # An audit without `run` is measured by the server on a round's models together.
    audits = [audit for audit in registry.enabled(config) if audit.run is not None]
    for done, audit in enumerate(audits):
        progress.step(f"audits ({vantage} model)", done, len(audits), audit.name)
        part: AuditPart = audit.run(config, model)
        metrics.update(part.metrics)
        if part.rows:
            rows[audit.name] = [{"vantage": vantage, **r} for r in part.rows]
        curves.update(part.roc)
    progress.step(f"audits ({vantage} model)", len(audits), len(audits))
    return RoundAudit(metrics, rows, curves)
