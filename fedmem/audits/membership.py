"""Membership inference: every configured score over the audit's members (injected canaries,
a seeded sample of training QA samples) and non-members (never-injected twins, held-out QA
samples). AUC and TPR at low FPR for all samples, canaries only and QA samples only, and AUC
per replica count (its injected canaries against all twins). ROC points go to the run
folder (`roc/round-NNN.json`) for plotting and to the store's `mia_roc` table.
"""

from __future__ import annotations

import dataclasses
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
    Needs,
    ReplicaColumn,
    ReportColumn,
    ReportView,
    StoreTable,
    dig,
)
from fedmem.audits.intervals import auc_ci, ci_bound, formatted
from fedmem.seeding import AUC_BOOTSTRAP, MIA_MEMBERS, derive_seed

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
    held-out QA samples the audits score (`data.heldout_sample`). Both samples are the
    same every round."""
    from fedmem.data.federated import audited_heldout_texts, planted, training_qa_texts
    from fedmem.models.loading import load_tokenizer
    from fedmem.training import encode_samples

    tokenizer = load_tokenizer(config)
    training = training_qa_texts(config, load_tokenizer)  # distinct, sorted
    heldout = list(audited_heldout_texts(config, load_tokenizer))  # rendered as trained
    n = qa_member_count(config, len(training), len(heldout))
    members = random.Random(derive_seed(config.seed, MIA_MEMBERS)).sample(training, n)
    canaries = planted(config, load_tokenizer).canaries
    entries = [("canary", c.canary_id, c.injected, c.replicas, c.text) for c in canaries]
    entries += [("qa", f"train-{i}", True, None, t) for i, t in enumerate(members)]
    entries += [("qa", f"heldout-{i}", False, None, t) for i, t in enumerate(heldout)]
    ids = encode_samples(tokenizer, [e[4] for e in entries], config.training.max_seq_len)
    return tuple(
        MembershipSample(sid, kind, member, replicas, text, tuple(row))
        for (kind, sid, member, replicas, text), row in zip(entries, ids, strict=True)
    )


def qa_member_count(config: Config, training: int, heldout: int) -> int:
    """Training QA samples scored as members: `attack.membership.qa_members`, or as many as
    the held-out samples scored when it is 0; at most every training sample (a larger
    number means all of them, as it always has: the row's `populations` says how many)."""
    return min(config.attack.membership.qa_members or heldout, training)


def qa_populations(config: Config) -> dict[str, int]:
    """The QA populations the membership samples are drawn from, and their sizes: the
    report's context for the AUC interval (a sample, not the whole federation)."""
    from fedmem.data.federated import held_out_count, training_qa_texts
    from fedmem.models.loading import load_tokenizer

    training = len(training_qa_texts(config, load_tokenizer))
    heldout = held_out_count(config, load_tokenizer)
    scored_heldout = config.data.heldout_sample or heldout
    return {
        "qa_members": qa_member_count(config, training, scored_heldout),
        "qa_member_population": training,
        "qa_nonmembers": scored_heldout,
        "qa_nonmember_population": heldout,
    }


@lru_cache(maxsize=2)
def reference_scores(config: Config) -> tuple[TokenScores, ...]:
    """Token scores under the model before fine-tuning (round 0): the base model, which
    also equals round 0 under LoRA, whose fresh adapters change nothing."""
    from attacks.likelihood import token_logprobs
    from fedmem.models.loading import load_base_model, load_tokenizer

    rows = [s.ids for s in membership_samples(config)]
    pad_id = load_tokenizer(config).pad_token_id
    reference = load_base_model(_reference_config(config))
    return tuple(token_logprobs(reference, rows, pad_id, config.training.batch_size))


def _reference_config(config: Config) -> Config:
    """`config` with model.name at `attack.membership.reference_model`, when that is set."""
    name = config.attack.membership.reference_model
    if not name:
        return config
    return dataclasses.replace(config, model=dataclasses.replace(config.model, name=name))


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
    needs_ref = {"reference", "rmia"} & set(mia.scores)
    ref = reference_scores(config) if needs_ref else (None,) * len(samples)
    inputs = [Sample(s.text, t, r) for s, t, r in zip(samples, scores, ref, strict=True)]
    values = {
        name: _rmia(config, samples, inputs) if name == "rmia"
        else [SCORES[name](x, mia.min_k) for x in inputs]
        for name in mia.scores
    }
    metrics: dict = {
        "members": sum(s.member for s in samples),
        "nonmembers": sum(not s.member for s in samples),
        "min_k": mia.min_k,
        "populations": qa_populations(config),
        "scores": {},
    }
    curves: dict = {}
    for name, v in values.items():
        # RMIA scores are fractions of the population beaten: a member can score at most 1
        top = 1.0 if name == "rmia" else None
        metrics["scores"][name], curves[name] = _score_entry(config, samples, v, top)
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


def _rmia(
    config: Config, samples: tuple[MembershipSample, ...], inputs: list
) -> list[float]:
    """RMIA of each sample against the non-members of its own kind (twins for canaries,
    held-out QA for QA samples), leaving a non-member out of its own population.

    Per kind, not all non-members: canaries (records with random secrets) and QA samples sit
    at different likelihood levels under both models and fine-tuning moves them by different
    amounts, so a canary's LR against QA non-members would measure its kind, not its
    membership. Per kind, each score is the fraction of like non-members the sample beats,
    one [0, 1] scale, so the canaries-only, QA-only and all-samples AUCs all read it.
    When a kind has fewer than two non-members (a run designed with one canary and no
    twins), there is no like population to compare with: every sample is then compared with
    all non-members."""
    from attacks.membership import rmia_scores

    mia = config.attack.membership
    kinds = [s.kind for s in samples]
    alike = all(
        sum(not s.member for s in samples if s.kind == kind) >= 2 for kind in set(kinds)
    )
    return rmia_scores(
        [float(x.scores.logprob.mean()) for x in inputs],
        [float(x.reference.logprob.mean()) for x in inputs],
        [not s.member for s in samples],
        kinds if alike else None,
        offline_a=mia.rmia_offline_a,
        gamma=mia.rmia_gamma,
    ).tolist()


def _score_entry(
    config: Config, samples: tuple[MembershipSample, ...], v: list[float],
    top: float | None = None,
) -> tuple[dict, dict]:
    """One score's summary (per population, AUC per replica count) and its ROC points.

    `top`: the highest score a sample can get, for a score bounded on the members' side.
    Then each population also carries `auc_max`, its AUC if every member scored `top`. For
    RMIA with the non-members as their own leave-one-out population, the best non-member
    of each kind beats all the others and scores 1 too, so a perfect attack ties with it:
    the AUC tops out below 1 (1 - 1/(2n) with n non-members of one kind), and an AUC at
    `auc_max` means every member beat every non-member, not that the attack is weaker."""
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
        entry[pop] = {**curve.summary(), "auc_ci": _auc_ci(config, samples, v, idx)}
        if top is not None:
            entry[pop]["auc_max"] = roc(
                [top if samples[i].member else v[i] for i in idx],
                [samples[i].member for i in idx],
            ).auc
        curves[pop] = {"fpr": curve.fpr, "tpr": curve.tpr}
    entry["by_replicas"] = {}
    for r in config.canaries.replica_counts:
        idx = [i for i, s in enumerate(samples) if s.replicas == r] + twins
        curve = roc([v[i] for i in idx], [samples[i].member for i in idx])
        entry["by_replicas"][str(r)] = curve.auc
    return entry, curves


def _auc_ci(
    config: Config, samples: tuple[MembershipSample, ...], v: list[float], idx: list[int]
) -> list[float]:
    """95 % stratified bootstrap interval of the population's AUC, seeded from the run seed."""
    members = [v[i] for i in idx if samples[i].member]
    nonmembers = [v[i] for i in idx if not samples[i].member]
    return auc_ci(members, nonmembers, derive_seed(config.seed, AUC_BOOTSTRAP))


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


def _resolved_tpr(key: str, fpr: float):
    """The headline score's TPR at `fpr` over all samples; None where the row's non-members
    cannot resolve it (older rows stored the TPR at FPR 0 there)."""
    from attacks.statistics import min_nonmembers_for_fpr

    overall = _overall(key)

    def read(row: Mapping) -> Any:
        nonmembers = dig(row, "membership", "nonmembers")
        if nonmembers is not None and nonmembers < min_nonmembers_for_fpr(fpr):
            return None
        return overall(row)

    return read


def _overall_ci(side: int):
    def read(row: Mapping) -> Any:
        score = _score(row)
        entry = dig(row, "membership", "scores", score, "all") if score else None
        return ci_bound(entry, "auc", side)

    return read


def _nonmembers(row: Mapping) -> Any:
    return dig(row, "membership", "nonmembers")


def _members(row: Mapping) -> Any:
    return dig(row, "membership", "members")


def _tpr_text(value: float | None, fpr: float) -> str:
    """'12.5%', or 'n/a (needs ≥ 100 non-members)' where the TPR was not resolvable."""
    from attacks.statistics import min_nonmembers_for_fpr

    if value is None:
        return f"n/a (needs ≥ {min_nonmembers_for_fpr(fpr)} non-members)"
    return f"{value:.1%}"


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
    pop = m.get("populations")  # absent from rows written before the samples were sized
    members, nonmembers = "training QA", "held-out QA"
    if pop:
        members = f"{pop['qa_members']} of {pop['qa_member_population']} training QA"
        nonmembers = f"{pop['qa_nonmembers']} of {pop['qa_nonmember_population']} held-out QA"
    table = Table(
        title=(
            f"membership inference, round {row['round']}: {m['members']} members "
            f"(injected canaries, {members}) vs {m['nonmembers']} non-members "
            f"(twins, {nonmembers})"
        )
    )
    for col in ("score", "AUC", "TPR @ 1% FPR", "TPR @ 0.1% FPR", "AUC canaries", "AUC QA"):
        table.add_column(col, justify="right")
    for name, entry in m["scores"].items():
        table.add_row(
            name,
            _auc_text(entry["all"]),
            _tpr_text(entry["all"]["tpr_at_fpr_0.01"], 0.01),
            _tpr_text(entry["all"]["tpr_at_fpr_0.001"], 0.001),
            f"{entry['canaries']['auc']:.3f}" if "canaries" in entry else "-",
            f"{entry['qa']['auc']:.3f}" if "qa" in entry else "-",
        )
    return table


def _auc_text(entry: Mapping) -> str | None:
    """The AUC with its 95 % bootstrap interval, and the most its score allows where that
    is below 1 (RMIA: '0.975 [0.93, 1.00] (max 0.975)')."""
    text = formatted(entry, "auc", digits=3)
    if entry.get("auc_max") is not None and entry["auc_max"] < 1.0:
        text += f" (max {entry['auc_max']:.3f})"
    return text


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
    score, one line per combination (its lowest seed), on log-log axes as the field reads them:
    what matters is the TPR at low FPR. `curves`: run_id, combination, curve, fpr, tpr.

    Each axis starts at the smallest rate its samples resolve (1/n non-members, 1/n members);
    a point at FPR 0 is drawn at 1/n (the curve only rises, so its TPR holds there too) and
    TPR 0 is left out. The legend gives each line's n."""
    import math

    import matplotlib.pyplot as plt
    import numpy as np

    names = sorted(curves["curve"].unique())[:6]
    sizes = _roc_sizes(view)
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 4.4 * rows), squeeze=False)
    lowest = [1.0, 1.0]  # FPR, TPR
    for ax, name in zip(axes.flat, names, strict=False):
        for combination, group in curves[curves.curve == name].groupby("combination", sort=False):
            group = group.sort_values("point")
            members, nonmembers = sizes.get(group["run_id"].iloc[0], (None, None))
            floor = 1.0 / nonmembers if nonmembers else 1e-3
            fpr = np.maximum(group["fpr"].to_numpy(dtype=float), floor)
            tpr = group["tpr"].to_numpy(dtype=float)
            tpr = np.where(tpr > 0, tpr, np.nan)
            lowest = [min(lowest[0], floor), min(lowest[1], 1.0 / members if members else 1e-3)]
            ax.plot(fpr, tpr, view.linestyle(combination), color=view.colour(combination),
                    label=f"{combination} (n = {members}/{nonmembers})")
        ax.set_title(name, fontsize=10)
    for ax in axes.flat[:len(names)]:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lowest[0], 1.0)
        ax.set_ylim(lowest[1], 1.05)
        ax.plot([lowest[0], 1], [lowest[0], 1], ":", color="grey", lw=1, label="chance")
        ax.set_xlabel("false positive rate (log)")
        ax.set_ylabel("true positive rate (log)")
        ax.grid(alpha=0.3, which="both")
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8,
               title="combination (n = members/non-members, each combination's lowest seed)",
               title_fontsize=8, frameon=False)
    fig.suptitle("Membership inference ROC, final round (log-log)")
    fig.tight_layout(rect=(0, 0.06 + 0.025 * math.ceil(len(labels) / 3), 1, 1))
    return fig


def _roc_sizes(view: ReportView) -> dict[str, tuple[int | None, int | None]]:
    """run_id -> (members, non-members) its final ROC rests on; None where unknown."""
    runs = view.runs.set_index("run_id")
    if "mia_nonmembers" not in runs:
        return {}
    out = {}
    for run_id, row in runs.iterrows():
        nonmembers = row["mia_nonmembers"]
        members = row.get("mia_members")
        out[run_id] = (None if members is None or members != members else int(members),
                       None if nonmembers != nonmembers else int(nonmembers))
    return out


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
                   _auc_header, 1.0, 3, bounds=(0.0, 1.0),
                   note="*MIA*: membership inference by the headline score over all members "
                   "vs non-members",
                   absent="MIA AUC (no run audited membership: attack.membership.enabled = "
                   "false)"),
               frontier=lambda v: f"membership inference AUC ({v['mia_score']})"),
        Column("mia_auc_low", _overall_ci(0), doc="95 % bootstrap interval of mia_auc: low"),
        Column("mia_auc_high", _overall_ci(1), doc="95 % bootstrap interval of mia_auc: high"),
        Column("mia_tpr_at_1pct_fpr", _resolved_tpr("tpr_at_fpr_0.01", 0.01),
               doc="its TPR at 1% FPR; NULL with fewer than 100 non-members",
               report=ReportColumn("MIA TPR @ 1% FPR (%)", PCT, 1, bounds=(0.0, 1.0),
                                   needs=Needs("mia_nonmembers", 100, "non-members"))),
        Column("mia_tpr_at_01pct_fpr", _resolved_tpr("tpr_at_fpr_0.001", 0.001),
               doc="its TPR at 0.1% FPR; NULL with fewer than 1000 non-members"),
        Column("mia_nonmembers", _nonmembers, sql="INTEGER",
               doc="non-members the MIA TPRs rest on (a TPR at FPR f needs >= ceil(1/f))"),
        Column("mia_members", _members, sql="INTEGER",
               doc="members the MIA rests on (the ROC's smallest TPR step is 1/this)"),
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
               "samples, on log-log axes from 1/n (the smallest rate n samples resolve; low "
               "FPR is what matters), dotted: chance (one panel per score; each "
               "combination's lowest seed; n in the legend).",
               final_curves, draw_roc,
               absent="MIA ROC curves (no global curves in the runs' roc/round-NNN.json)"),
    ),
)
