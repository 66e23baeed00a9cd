"""The report's verdict, first on the page: per combination, what leaked, seen from which
vantage point, under which mitigation, at what utility cost, each number with its 95 %
interval. It never says "safe": a finding not made is given with the interval that bounds it.

- Exact extraction (global model, final round, headline decoding and prefix length), per
  replica group, pooled over the combination's seeds (k of n canaries, Clopper-Pearson). A
  group *leaked* when its rate is above the never-injected twins' (one-sided Fisher exact
  test per group, Holm-adjusted over the groups, p < 0.05): the twins measure what the model
  reproduces without ever seeing a secret.
- Membership inference: the headline score's AUC, the run's bootstrap interval for one seed,
  the t-interval over seeds otherwise; distinguishable when the interval lies above 0.5.
- Other vantage points the runs audited (the server's view of each client's update), the
  same way, when their rows are in the store.
- Mitigations: the labels of fedmem.mitigations.registry, as stored with each run.
- Utility: held-out perplexity before fine-tuning (round 0) -> final round, mean over seeds
  with its t-interval.
- DP audits: each run's verdict from its summary.json (`dp_audit`), which the store does not
  hold: the claimed epsilon against the empirical lower bound and the audit's ceiling.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from attacks.statistics import Interval, aggregate_seeds, holm
from fedmem.audits.declaration import ReportView
from fedmem.audits.intervals import rate_ci

if TYPE_CHECKING:
    import pandas as pd

ALPHA = 0.05
EXACT = re.compile(r"^extraction\.by_replicas\.(\d+)\.exact_rate$")
CLIENT_VIEW = re.compile(r"^client_view\.clients\.(\w+)\.extraction\.injected\.exact_rate$")


@dataclass
class Verdict:
    combination: str
    mitigations: str
    seeds: int
    lines: list[str] = field(default_factory=list)  # one finding each, plain text

    def heading(self) -> str:
        seeds = "1 seed" if self.seeds == 1 else f"{self.seeds} seeds, pooled"
        if self.combination == self.mitigations:  # a run outside a sweep
            return f"mitigations {self.mitigations} ({seeds})"
        return f"{self.combination}: mitigations {self.mitigations} ({seeds})"


@dataclass(frozen=True)
class Count:
    """Canaries reproduced exactly, k of n, pooled over seeds."""

    k: int
    n: int

    def text(self) -> str:
        low, high = rate_ci(self.k, self.n)
        return f"{self.k}/{self.n}, {_pct(self.k / self.n)} % [{_pct(low)}, {_pct(high)}]"


def _pct(x: float) -> str:
    return f"{x * 100:.1f}"


def _pooled(final: pd.DataFrame, rate: str) -> Count | None:
    """k/n of `rate` (a fraction beside its `.n` column) summed over the rows that carry it."""
    count = rate.removesuffix("exact_rate") + "n"
    if rate not in final or count not in final:
        return None
    rows = final[[rate, count]].dropna()
    if not len(rows) or rows[count].sum() == 0:
        return None
    k = int(round(float((rows[rate] * rows[count]).sum())))
    return Count(k, int(rows[count].sum()))


def _above(group: Count, twins: Count) -> float:
    """One-sided Fisher exact p-value that `group`'s exact rate exceeds the twins'."""
    from scipy.stats import fisher_exact

    table = [[group.k, group.n - group.k], [twins.k, twins.n - twins.k]]
    return float(fisher_exact(table, alternative="greater").pvalue)


def extraction_line(final: pd.DataFrame, vantage: str = "global model") -> str:
    """Which replica groups leaked exact extraction above the twins' level, with counts."""
    groups = {int(m.group(1)): c for column in final.columns
              if (m := EXACT.match(column)) and (c := _pooled(final, column))}
    twins = groups.pop(0, None)
    if not groups:
        return f"exact extraction ({vantage}): not audited"
    injected = Count(sum(c.k for c in groups.values()), sum(c.n for c in groups.values()))
    if twins is None:
        listed = "; ".join(f"{r}x: {c.text()}" for r, c in sorted(groups.items()))
        return (f"exact extraction ({vantage}): {listed} (no never-injected twins to compare "
                "with: no leak is called)")
    order = sorted(groups)
    tests = holm([_above(groups[r], twins) for r in order], ALPHA)  # over the groups
    leaked = {r: (groups[r], p) for r, p, reject in zip(order, tests.adjusted, tests.reject,
                                                         strict=True) if reject}
    base = f"twins {twins.text()}"
    if leaked:
        listed = "; ".join(f"{r}x ({c.text()}, Holm-adjusted p = {p:.3g})"
                           for r, (c, p) in sorted(leaked.items()))
        return (f"LEAKED, exact extraction ({vantage}) above the twins' level in replica "
                f"groups {listed}; {base}")
    if injected.k == 0:
        return (f"no exact extraction detected ({vantage}): injected {injected.text()}; "
                f"{base}")
    return (f"exact extraction ({vantage}) not above the twins' level in any replica group "
            f"(one-sided Fisher exact, Holm over the groups, p >= {ALPHA}): injected "
            f"{injected.text()}; {base}")


def client_view_lines(final: pd.DataFrame) -> list[str]:
    """The server's view of each client's update, where the runs audited it."""
    lines = []
    for column in final.columns:
        if (m := CLIENT_VIEW.match(column)) and (count := _pooled(final, column)):
            lines.append(f"server's view of client {m.group(1)}'s update: exact extraction "
                         f"{count.text()} of its injected canaries")
    return lines


def membership_line(runs: pd.DataFrame) -> str | None:
    """The headline MIA AUC with its interval, and whether it is above chance."""
    if "mia_auc" not in runs or runs["mia_auc"].isna().all():
        return None
    score = "/".join(dict.fromkeys(runs["mia_score"].dropna().astype(str)))
    aucs = runs["mia_auc"].dropna()
    if len(aucs) == 1:
        row = runs.loc[aucs.index[0]]
        auc = Interval(float(row["mia_auc"]), float(row["mia_auc_low"]),
                       float(row["mia_auc_high"]), 0.95, "")
        how = f"bootstrap over {int(row['mia_nonmembers'])} non-members"
    else:
        auc = aggregate_seeds(aucs.to_numpy(dtype=float), bounds=(0.0, 1.0))
        how = f"t-interval over {len(aucs)} seeds"
    if math.isnan(auc.low) or math.isnan(auc.high):
        reading = "inconclusive (no interval)"
    elif auc.low > 0.5:
        reading = "members distinguishable from non-members"
    elif auc.high < 0.5:
        reading = "below chance"
    else:
        reading = "not distinguishable from chance at this power"
    return f"membership inference ({score}, global model): AUC {auc.format(digits=3)} ({how}): " \
           f"{reading}"


def utility_line(runs: pd.DataFrame, rounds: pd.DataFrame) -> str | None:
    """Held-out perplexity before fine-tuning -> final round (mean [t-interval over seeds])."""
    if "heldout_perplexity" not in rounds or rounds["heldout_perplexity"].isna().all():
        return None
    mine = rounds[rounds["run_id"].isin(runs["run_id"])]
    before = mine[mine["round"] == 0]["heldout_perplexity"].dropna()
    after = runs["heldout_perplexity"].dropna()
    text = "utility: held-out perplexity "
    if len(before):
        text += f"{_seeds(before)} before fine-tuning -> "
    return text + f"{_seeds(after)} after (lower is better)"


def _seeds(values: pd.Series) -> str:
    return aggregate_seeds(values.to_numpy(dtype=float), bounds=(1.0, math.inf)).format(digits=1)


def dp_lines(paths: list[str]) -> list[str]:
    """Each run's DP audit verdict (claimed epsilon vs lower bound and ceiling), if audited."""
    lines = []
    for path in paths:
        summary_file = Path(path) / "summary.json"
        if not summary_file.exists():
            continue
        audit = json.loads(summary_file.read_text()).get("dp_audit") or {}
        for level, facts in audit.items():
            if not isinstance(facts, dict) or "verdict" not in facts:
                continue
            claimed = facts.get("epsilon_claimed")
            bounds = [v for k, v in facts.items()
                      if k.startswith("epsilon_one_run") or k == "epsilon_lower_bound"]
            for threat in (t for t in facts.values() if isinstance(t, dict)):  # per statistic
                bounds += [v for k, v in threat.items()
                           if k.startswith("epsilon_one_run") or k == "epsilon_lower_bound"]
            bounds = [b for b in bounds if b is not None]
            ceilings = [v for k, v in facts.items()
                        if k.startswith("epsilon_ceiling") and v is not None]
            lines.append(
                f"DP audit ({level} level, {Path(path).name}): claimed epsilon "
                f"{_eps(claimed)}, empirical lower bound {_eps(max(bounds, default=None))}, "
                f"ceiling {_eps(max(ceilings, default=None))}: {facts['verdict'] or 'n/a'}")
    return lines


def _eps(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "inf" if value == float("inf") else f"{value:.3f}"


def verdicts(data: ReportView) -> list[Verdict]:
    """One verdict per combination, in the report's order."""
    out = []
    for combination, runs in data.runs.groupby("combination", sort=False):
        final = data.final[data.final["combination"] == combination]
        labels = "/".join(dict.fromkeys(runs["mitigations"].astype(str)))
        verdict = Verdict(combination, labels, len(runs))
        verdict.lines.append(extraction_line(final))
        verdict.lines += client_view_lines(final)
        verdict.lines += [line for line in (membership_line(runs),
                                            utility_line(runs, data.rounds)) if line]
        verdict.lines += dp_lines(list(runs["path"]))
        out.append(verdict)
    return out


RULE = (
    "Final round. A replica group leaked when its exact-extraction rate is above the "
    "never-injected twins' (one-sided Fisher exact test, Holm-adjusted over the replica "
    "groups, p < 0.05; counts pooled over seeds, "
    "95 % Clopper-Pearson intervals); MIA: interval above 0.5. A finding not made is shown "
    "with the interval that bounds it, not as safety."
)
