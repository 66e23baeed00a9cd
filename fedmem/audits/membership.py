"""Membership inference: every configured score over the audit's members (injected canaries,
a seeded sample of training QA samples) and non-members (never-injected twins, held-out QA
samples). AUC and TPR at low FPR for all samples, canaries only and QA samples only, and AUC
per replica count (its injected canaries against all twins). ROC points go to the run
folder (`roc/round-NNN.json`) for plotting and to the store's `mia_roc` table.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
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
)

if TYPE_CHECKING:
    import torch

    from attacks.likelihood import TokenScores
    from fedmem.config import Config

PCT = 100.0


@dataclass(frozen=True)
class MembershipSample:
    sample_id: str  # canary id, or "train-<i>" / "heldout-<i>" for QA samples
    kind: str  # "canary" or "qa"
    member: bool
    replicas: int | None  # canaries only
    text: str
    ids: tuple[int, ...]  # as trained: the text's tokens and EOS, truncated


@lru_cache(maxsize=4)
def membership_samples(config: Config) -> tuple[MembershipSample, ...]:
    """Members: injected canaries and a seeded sample of the training QA rows (never an
    exposure canary or a DP audit record); non-members: the never-injected twins and the
    held-out QA samples."""
    from fedmem.data.federated import build_federated_data
    from fedmem.models.loading import load_tokenizer
    from fedmem.training import encode_samples

    data = build_federated_data(config, load_tokenizer)
    tokenizer = load_tokenizer(config)
    training = sorted(set(data.qa_texts))  # never a canary or a DP audit record
    heldout = list(data.heldout_texts)  # rendered as the members were trained
    n = min(config.attack.membership.qa_members or len(heldout), len(training))
    members = random.Random(config.seed * 1_000_003 + 7).sample(training, n)
    entries = [("canary", c.canary_id, c.injected, c.replicas, c.text) for c in data.canaries]
    entries += [("qa", f"train-{i}", True, None, t) for i, t in enumerate(members)]
    entries += [("qa", f"heldout-{i}", False, None, t) for i, t in enumerate(heldout)]
    ids = encode_samples(tokenizer, [e[4] for e in entries], config.training.max_seq_len)
    return tuple(
        MembershipSample(sid, kind, member, replicas, text, tuple(row))
        for (kind, sid, member, replicas, text), row in zip(entries, ids, strict=True)
    )


@lru_cache(maxsize=2)
def reference_scores(config: Config) -> tuple[TokenScores, ...]:
    """Token scores under the model before fine-tuning (round 0): the base model, which
    also equals round 0 under LoRA, whose fresh adapters change nothing."""
    from attacks.likelihood import token_logprobs
    from fedmem.models.loading import load_base_model, load_tokenizer

    rows = [s.ids for s in membership_samples(config)]
    pad_id = load_tokenizer(config).pad_token_id
    return tuple(token_logprobs(load_base_model(config), rows, pad_id, config.training.batch_size))


def audit_membership(config: Config, model: torch.nn.Module) -> AuditPart:
    from attacks.likelihood import token_logprobs
    from attacks.membership import SCORES, Sample
    from fedmem.models.loading import load_tokenizer

    mia = config.attack.membership
    samples = membership_samples(config)
    pad_id = load_tokenizer(config).pad_token_id
    scores = token_logprobs(
        model, [s.ids for s in samples], pad_id, config.training.batch_size, moments=True
    )
    ref = reference_scores(config) if "reference" in mia.scores else (None,) * len(samples)
    inputs = [Sample(s.text, t, r) for s, t, r in zip(samples, scores, ref, strict=True)]
    values = {name: [SCORES[name](x, mia.min_k) for x in inputs] for name in mia.scores}
    metrics: dict = {
        "members": sum(s.member for s in samples),
        "nonmembers": sum(not s.member for s in samples),
        "min_k": mia.min_k,
        "scores": {},
    }
    curves: dict = {}
    for name, v in values.items():
        metrics["scores"][name], curves[name] = _score_entry(config, samples, v)
    rows = [
        {
            "sample_id": s.sample_id,
            "kind": s.kind,
            "member": s.member,
            "replicas": s.replicas,
            "scores": {name: v[i] for name, v in values.items()},
        }
        for i, s in enumerate(samples)
    ]
    return AuditPart({"membership": metrics}, rows, curves)


def _score_entry(
    config: Config, samples: tuple[MembershipSample, ...], v: list[float]
) -> tuple[dict, dict]:
    """One score's summary (per population, AUC per replica count) and its ROC points."""
    from attacks.membership import roc

    populations = {
        "all": list(range(len(samples))),
        "canaries": [i for i, s in enumerate(samples) if s.kind == "canary"],
        "qa": [i for i, s in enumerate(samples) if s.kind == "qa"],
    }
    twins = [i for i, s in enumerate(samples) if s.kind == "canary" and not s.member]
    entry: dict = {}
    curves: dict = {}
    for pop, idx in populations.items():
        if not any(samples[i].member for i in idx) or all(samples[i].member for i in idx):
            continue
        curve = roc([v[i] for i in idx], [samples[i].member for i in idx])
        entry[pop] = curve.summary()
        curves[pop] = {"fpr": curve.fpr, "tpr": curve.tpr}
    entry["by_replicas"] = {}
    for r in config.canaries.replica_counts:
        idx = [i for i, s in enumerate(samples) if s.replicas == r] + twins
        curve = roc([v[i] for i in idx], [samples[i].member for i in idx])
        entry["by_replicas"][str(r)] = curve.auc
    return entry, curves


# ------------------------------------------------------------------- headline numbers


def headline_score(membership: Mapping) -> str:
    """The MIA score the tables show: the reference ratio when it was computed, else the
    first configured score."""
    scores = membership["scores"]
    return "reference" if "reference" in scores else next(iter(scores))


def _score(row: Mapping) -> str | None:
    membership = row.get("membership")
    return headline_score(membership) if membership else None


def _overall(key: str):
    def read(row: Mapping) -> Any:
        score = _score(row)
        return dig(row, "membership", "scores", score, "all", key) if score else None

    return read


def _auc_by_replicas(row: Mapping, replicas: str) -> Any:
    score = _score(row)
    return dig(row, "membership", "scores", score, "by_replicas", replicas) if score else None


def _auc_header(values: Mapping[str, Any]) -> str:
    return f"MIA AUC ({values['mia_score']})" if values.get("mia_score") else "MIA AUC"


# ---------------------------------------------------------------------- the terminal


def membership_table(row: Mapping) -> Any:
    """Each MIA score: AUC and TPR at 1% and 0.1% FPR over all members vs non-members."""
    from rich.table import Table

    m = row["membership"]
    table = Table(
        title=(
            f"membership inference, round {row['round']}: {m['members']} members "
            f"(injected canaries, training QA) vs {m['nonmembers']} non-members "
            "(twins, held-out QA)"
        )
    )
    for col in ("score", "AUC", "TPR @ 1% FPR", "TPR @ 0.1% FPR", "AUC canaries", "AUC QA"):
        table.add_column(col, justify="right")
    for name, entry in m["scores"].items():
        table.add_row(
            name,
            f"{entry['all']['auc']:.3f}",
            f"{entry['all']['tpr_at_fpr_0.01']:.1%}",
            f"{entry['all']['tpr_at_fpr_0.001']:.1%}",
            f"{entry['canaries']['auc']:.3f}" if "canaries" in entry else "-",
            f"{entry['qa']['auc']:.3f}" if "qa" in entry else "-",
        )
    return table


def details(summary: Mapping) -> list[Any]:
    return [membership_table(summary["final"])] if "membership" in summary["final"] else []


# ------------------------------------------------------------------------ the store

MIA_ROC_DDL = """
CREATE TABLE IF NOT EXISTS mia_roc (
    run_id TEXT NOT NULL, round INTEGER, curve TEXT NOT NULL, point INTEGER NOT NULL,
    fpr REAL NOT NULL, tpr REAL NOT NULL, population TEXT
);
CREATE INDEX IF NOT EXISTS mia_roc_run ON mia_roc (run_id);
"""


def roc_points(run_dir: Path) -> list[tuple]:
    """The global model's ROC points (roc/round-NNN.json: {vantage: {score: {population:
    {"fpr", "tpr"}}}}): round, curve, population, point, fpr, tpr."""
    points: list[tuple] = []
    for file in sorted((run_dir / "roc").glob("round-*.json")):
        rnd = int(file.stem.removeprefix("round-"))
        for score, populations in json.loads(file.read_text()).get(GLOBAL, {}).items():
            for population, curve in populations.items():
                points += [(rnd, score, population, i, float(f), float(t))
                           for i, (f, t) in enumerate(zip(curve["fpr"], curve["tpr"], strict=True))]
    return points


# ------------------------------------------------------------------------ the report


def final_curves(view: ReportView) -> Any:
    """The final round's global curves over all samples, each combination's lowest seed."""
    roc = view.table("mia_roc")
    roc = roc[roc["population"] == "all"]
    if not len(roc):
        return roc
    final = view.final_round(roc)
    lowest = final.groupby("combination")["seed"].transform("min")
    return final[final.seed == lowest]


def draw_roc(curves: Any, view: ReportView) -> Any:
    """ROC curves of the membership-inference scores at the final audited round, one panel per
    score, one line per combination (its lowest seed). `curves`: combination, curve, fpr, tpr."""
    import matplotlib.pyplot as plt

    names = sorted(curves["curve"].unique())[:6]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for combination, group in curves[curves.curve == name].groupby("combination", sort=False):
            group = group.sort_values("point")
            ax.plot(group["fpr"], group["tpr"], view.linestyle(combination),
                    color=view.colour(combination), label=combination)
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=6, loc="lower right")
    fig.suptitle("Membership inference ROC, final round")
    fig.tight_layout()
    return fig


AUDIT = Audit(
    name="membership",
    order=30,
    enabled=lambda config: config.attack.membership.enabled,
    run=audit_membership,
    output="membership.jsonl",
    columns=(
        Column("mia_score", _score, sql="TEXT",
               doc="headline MIA score (final round), NULL: no MIA audit"),
        Column("mia_auc", _overall("auc"), doc="its AUC over all members vs non-members",
               report=ReportColumn(
                   _auc_header, 1.0, 3,
                   note="*MIA*: membership inference by the headline score over all members "
                   "vs non-members",
                   absent="MIA AUC (no run audited membership: attack.membership.enabled = "
                   "false)"),
               frontier=lambda v: f"membership inference AUC ({v['mia_score']})"),
        Column("mia_tpr_at_1pct_fpr", _overall("tpr_at_fpr_0.01"),
               report=ReportColumn("MIA TPR @ 1% FPR (%)", PCT, 1)),
        Column("mia_tpr_at_01pct_fpr", _overall("tpr_at_fpr_0.001")),
    ),
    round_line="MIA AUC {mia_auc:.2f} ({mia_score})",
    by_replicas=(ReplicaColumn(_auc_header, _auc_by_replicas, "{:.2f}"),),
    details=details,
    tables=(StoreTable("mia_roc", MIA_ROC_DDL,
                       ("round", "curve", "population", "point", "fpr", "tpr"), roc_points,
                       frame="roc"),),
    figures=(
        Figure("mia_roc",
               "Membership-inference ROC curves of the global model at the final round, all "
               "samples (one panel per score; each combination's lowest seed).",
               final_curves, draw_roc,
               absent="MIA ROC curves (no global curves in the runs' roc/round-NNN.json)"),
    ),
)
