"""Exposure (Carlini et al. 2019) of every exposure canary's digit secret, by replica count
(0 = never-injected twins): how far the model ranks the true secret ahead of every other
string of as many digits, in bits. Per canary in `exposure.jsonl` and the store's `exposure`
table (the global model's view).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedmem.audits.declaration import (
    GLOBAL,
    Audit,
    AuditPart,
    Column,
    Figure,
    ReplicaColumn,
    ReportColumn,
    ReportView,
    StoreTable,
    dig,
    interval_columns,
)
from fedmem.audits.intervals import formatted, mean_ci
from fedmem.seeding import EXPOSURE_BOOTSTRAP, EXPOSURE_CANDIDATES, derive_seed

if TYPE_CHECKING:
    import torch

    from fedmem.config import Config


def audit_exposure(config: Config, model: torch.nn.Module) -> AuditPart:
    from attacks.exposure import measure_exposure
    from fedmem.data.federated import planted
    from fedmem.models.loading import load_tokenizer

    tokenizer = load_tokenizer(config)
    ex = config.attack.exposure
    rows = []
    for i, c in enumerate(planted(config, load_tokenizer).exposure_canaries):
        # The split sits before the secret's leading space; the candidates vary the digits.
        r = measure_exposure(
            model,
            tokenizer,
            c.canary_id,
            c.text[: c.split + 1],
            c.text[c.split + 1 :],
            max_enumerate=ex.max_enumerate,
            sample_size=ex.sample_size,
            seed=derive_seed(config.seed, EXPOSURE_CANDIDATES, i),
            estimator=ex.estimator,
        )
        rows.append(
            {
                "canary_id": c.canary_id,
                "replicas": c.replicas,
                "exposure": r.exposure,
                "method": r.method,
                "rank": r.rank,
                "space": r.space,
                "candidates": r.candidates,
            }
        )
    groups: dict[int, list[float]] = defaultdict(list)
    for row in rows:
        groups[row["replicas"]].append(row["exposure"])
    injected = [row["exposure"] for row in rows if row["replicas"] > 0]
    seed = derive_seed(config.seed, EXPOSURE_BOOTSTRAP)
    metrics = {
        "space": rows[0]["space"],
        "method": rows[0]["method"],
        "injected": _stats(injected, seed),
        "by_replicas": {str(k): _stats(v, seed) for k, v in sorted(groups.items())},
    }
    return AuditPart({"exposure": metrics}, rows)


def _stats(values: list[float], seed: int) -> dict:
    """n, mean and max exposure, and `mean_ci`: a 95 % percentile bootstrap interval of the
    mean over the group's canaries, seeded from the run seed (reruns give the same one)."""
    if not values:
        return {"n": 0, "mean": None, "max": None, "mean_ci": None}
    return {"n": len(values), "mean": sum(values) / len(values), "max": max(values),
            "mean_ci": mean_ci(values, seed)}


# ------------------------------------------------------------------------ the store

EXPOSURE_DDL = """
CREATE TABLE IF NOT EXISTS exposure (
    run_id TEXT NOT NULL, round INTEGER, canary_id TEXT NOT NULL, replicas INTEGER,
    exposure REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS exposure_run ON exposure (run_id);
"""


def exposures(run_dir: Path) -> list[tuple]:
    """The global model's per-canary exposures of exposure.jsonl: round, canary, replicas,
    exposure (bits)."""
    path = run_dir / "exposure.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        (r["round"], r["canary_id"], r.get("replicas"), float(r["exposure"]))
        for r in rows
        if r.get("vantage", GLOBAL) == GLOBAL
    ]


# ------------------------------------------------------------------------ the report


def final_exposures(view: ReportView) -> Any:
    return view.final_round(view.table("exposure"))


def draw_exposure(exposure: Any, view: ReportView) -> Any:
    """Exposure (bits) of each canary at the final round, by replica count, per combination.
    `exposure`: combination, replicas, exposure."""
    import matplotlib.pyplot as plt

    combinations = [c for c in view.style.index if c in set(exposure["combination"])]
    counts = sorted(exposure["replicas"].dropna().unique())
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(counts) * len(combinations) / 2), 4.2))
    width = 0.8 / max(len(combinations), 1)
    for j, combination in enumerate(combinations):
        data = exposure[exposure.combination == combination]
        values = [data[data.replicas == r]["exposure"].to_numpy() for r in counts]
        box = ax.boxplot(values, positions=[i + (j - (len(combinations) - 1) / 2) * width
                                            for i in range(len(counts))],
                         widths=width * 0.9, patch_artist=True, manage_ticks=False)
        for patch in box["boxes"]:
            patch.set_facecolor(view.colour(combination))
            patch.set_alpha(0.6)
        ax.plot([], [], "s", color=view.colour(combination), label=combination)
    ax.set_xticks(range(len(counts)), [("0 (twins)" if r == 0 else f"{int(r)}x") for r in counts])
    ax.set_xlabel("copies of each canary in the training data")
    ax.set_ylabel("exposure (bits)")
    ax.set_title("Exposure distribution, final round")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _mean_by_replicas(row: Mapping, replicas: str) -> Any:
    """'3.2 bits [2.1, 4.0]': the group's mean exposure with its bootstrap interval."""
    return formatted(dig(row, "exposure", "by_replicas", replicas), "mean", "bits")


AUDIT = Audit(
    name="exposure",
    order=40,
    enabled=lambda config: bool(
        config.attack.exposure.enabled and config.canaries.exposure_per_count
    ),
    run=audit_exposure,
    output="exposure.jsonl",
    columns=(
        Column("exposure_mean", lambda row: dig(row, "exposure", "injected", "mean"),
               doc="mean exposure (bits) of injected exposure canaries",
               report=ReportColumn(
                   "exposure (bits)", 1.0, 2,
                   note="*exposure*: mean exposure of injected exposure canaries")),
        *interval_columns("exposure_mean", lambda row: dig(row, "exposure", "injected"),
                          "mean", "bootstrap interval (over canaries)"),
    ),
    round_line="exposure {exposure_mean:.1f} bits",
    by_replicas=(ReplicaColumn("exposure, bits [95% CI]", _mean_by_replicas),),
    tables=(StoreTable("exposure", EXPOSURE_DDL,
                       ("round", "canary_id", "replicas", "exposure"), exposures),),
    figures=(
        Figure("exposure",
               "Exposure of each exposure canary under the global model at the final round, "
               "by replica count (0 = never-injected twins).",
               final_exposures, draw_exposure,
               absent="exposure (no run audited exposure: attack.exposure.enabled = false "
               "or canaries.exposure_per_count = 0)"),
    ),
)
