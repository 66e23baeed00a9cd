"""Every reported figure with its interval: the audits' rows carry intervals beside their
estimates, the store and the terminal show them, and seeded intervals repeat exactly."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from rich.console import Console

from attacks.extraction import ExtractionResult
from fedmem.audits import registry
from fedmem.audits.extraction import extraction_metrics
from fedmem.runs.report import summary_table


def _results(exact: int, n: int, replicas: int = 4) -> tuple[list, dict]:
    """n canaries of one replica group, the first `exact` extracted exactly."""
    canaries = {f"c{i}": SimpleNamespace(replicas=replicas, clients=(i % 2,) * replicas)
                for i in range(n)}
    results = [ExtractionResult(f"c{i}", (), i < exact, 1.0 if i < exact else 0.5, 0)
               for i in range(n)]
    return results, canaries


def test_five_of_eight_extracted_carries_the_clopper_pearson_interval():
    metrics = extraction_metrics(*_results(5, 8))
    for group in (metrics["injected"], metrics["by_replicas"]["4"]):
        assert group["exact_rate"] == 0.625 and group["n"] == 8  # unchanged keys and values
        low, high = group["exact_rate_ci"]
        assert (round(low * 100, 1), round(high * 100, 1)) == (24.5, 91.5)
    assert all("exact_rate_ci" in g for g in metrics["by_client"].values())


def test_no_and_all_canaries_extracted_reach_the_bounds():
    assert extraction_metrics(*_results(0, 8))["injected"]["exact_rate_ci"][0] == 0.0
    assert extraction_metrics(*_results(8, 8))["injected"]["exact_rate_ci"][1] == 1.0


def test_the_store_columns_hold_the_headline_interval():
    row = {"extraction": extraction_metrics(*_results(5, 8))}
    values = registry.get("extraction").values(row)
    assert values["exact_rate"] == 0.625
    assert values["exact_rate_low"] == pytest.approx(0.2449, abs=1e-4)
    assert values["exact_rate_high"] == pytest.approx(0.9148, abs=1e-4)
    assert registry.get("extraction").values({})["exact_rate_low"] is None  # not audited


def test_the_terminal_table_shows_rate_and_interval_with_the_unit_in_the_header():
    final = {"extraction": {**extraction_metrics(*_results(5, 8)), "decoding": "greedy",
                            "prefix_tokens": 8}}
    before = {"extraction": extraction_metrics(*_results(0, 8))}
    summary = {"name": "t", "mode": "simulation", "finetuning": "lora", "rounds": 1,
               "final": final, "before": before}
    console = Console(width=400, record=True)
    console.print(summary_table(summary))
    text = console.export_text()
    assert "exact, % [95% CI]" in text
    assert "62.5 % [24.5, 91.5]" in text
    assert "0.0 % [0.0, 36.9]" in text  # round 0: none of 8


def test_rows_from_before_intervals_still_show_their_rate():
    from fedmem.audits.intervals import formatted

    assert formatted({"exact_rate": 0.5, "n": 4}, "exact_rate", "%") == "50.0 %"
    assert formatted(None, "exact_rate", "%") is None


def _samples(n: int) -> tuple:
    """n members then n non-members; odd ones canaries (members with 4 replicas)."""
    from fedmem.audits.membership import MembershipSample

    return tuple(
        MembershipSample(f"s{i}", "canary" if i % 2 else "qa", i < n,
                         (4 if i < n else 0) if i % 2 else None, "x", ())
        for i in range(2 * n)
    )


def test_mia_auc_carries_a_seeded_bootstrap_interval_around_it():
    from fedmem.audits.membership import _score_entry

    config = SimpleNamespace(seed=7, canaries=SimpleNamespace(replica_counts=(4,)))
    samples = _samples(20)
    scores = [float(i % 7) + (3.0 if s.member else 0.0) for i, s in enumerate(samples)]
    entry, _ = _score_entry(config, samples, scores)
    again, _ = _score_entry(config, samples, scores)
    for pop in ("all", "canaries", "qa"):
        low, high = entry[pop]["auc_ci"]
        assert low <= entry[pop]["auc"] <= high and low < high
        assert again[pop]["auc_ci"] == [low, high]  # seeded: a rerun gives the same interval
    other, _ = _score_entry(SimpleNamespace(seed=8, canaries=config.canaries), samples, scores)
    assert other["all"]["auc_ci"] != entry["all"]["auc_ci"]  # from the run seed
    values = registry.get("membership").values({"membership": {"scores": {"loss": entry}}})
    assert [values["mia_auc_low"], values["mia_auc_high"]] == entry["all"]["auc_ci"]


def test_exposure_means_carry_a_seeded_bootstrap_interval():
    from attacks.statistics import bootstrap_interval
    from fedmem.audits.exposure import _mean_by_replicas, _stats

    values = [1.0, 2.0, 4.0, 8.0, 3.0, 5.0]
    stats = _stats(values, seed=3)
    assert stats["mean"] == pytest.approx(23 / 6) and stats["n"] == 6
    expected = bootstrap_interval(values, resamples=1000, seed=3)
    assert stats["mean_ci"] == [expected.low, expected.high] == _stats(values, seed=3)["mean_ci"]
    row = {"exposure": {"by_replicas": {"4": stats}}}
    assert _mean_by_replicas(row, "4") == expected.format("bits")
    assert _stats([], seed=3)["mean_ci"] is None
    one = _stats([4.0], seed=3)  # one canary: no interval rather than a zero-width one
    assert one["mean_ci"] is None
    assert _mean_by_replicas({"exposure": {"by_replicas": {"1": one}}}, "1") == "4.0 bits"


def test_report_cells_show_the_mean_with_its_t_interval_over_seeds():
    import pandas as pd

    from fedmem.runs.report_files import _fmt, seed_interval

    ci = seed_interval(pd.Series([0.25, 0.5, None]))  # a run without the column is skipped
    assert ci.estimate == 0.375 and ci.method == "t-interval over 2 seeds"
    # mean +- t(0.975, 1) * s / sqrt(2) = 37.5 +- 12.706 * 12.5 = [-121.3, 196.3], cut to
    # the value's range (by default, not below 0)
    assert _fmt(ci.estimate, ci.low, ci.high, 100) == "37.5 [0.0, 196.3]"
    rate = seed_interval(pd.Series([0.25, 0.5]), bounds=(0.0, 1.0))
    assert _fmt(rate.estimate, rate.low, rate.high, 100) == "37.5 [0.0, 100.0]"
    one = seed_interval(pd.Series([0.25]))
    assert _fmt(one.estimate, one.low, one.high, 100) == "25.0"  # one seed: no interval
    none = seed_interval(pd.Series([None], dtype=float))
    assert _fmt(none.estimate, none.low, none.high) == "n/a"


def test_replica_cells_use_seeds_or_for_one_seed_the_groups_clopper_pearson():
    import pandas as pd

    from fedmem.audits.extraction import by_replicas, replica_rows

    final = pd.DataFrame({
        "combination": ["full", "full", "lora"],
        "extraction.by_replicas.4.exact_rate": [0.5, 0.75, 0.625],
        "extraction.by_replicas.4.n": [8, 8, 8],
    })
    view = SimpleNamespace(final=final, style=pd.DataFrame(index=["full", "lora"]))
    cells = by_replicas(view).set_index("combination")
    assert cells.loc["lora", ["low", "high"]].round(1).tolist() == [24.5, 91.5]
    assert cells.loc["full", "mean"] == 62.5
    # 62.5 + 12.706 * 12.5 = 221.3 %: a rate's interval stops at 100 %
    assert cells.loc["full", "high"] == 100.0
    assert cells.loc["full", "low"] == 0.0  # 62.5 - 158.8
    assert replica_rows(view)[2] == ["lora", "62.5 [24.5, 91.5]"]


def test_seeds_that_agree_exactly_fall_back_to_clopper_pearson_over_their_canaries():
    import pandas as pd

    from fedmem.audits.extraction import by_replicas

    final = pd.DataFrame({"combination": ["full", "full"],
                          "extraction.by_replicas.4.exact_rate": [0.0, 0.0],
                          "extraction.by_replicas.4.n": [4, 4]})
    view = SimpleNamespace(final=final, style=pd.DataFrame(index=["full"]))
    cell = by_replicas(view).iloc[0]
    assert (cell["mean"], cell["low"]) == (0.0, 0.0)
    assert cell["high"] == pytest.approx(36.94, abs=0.01)  # 0 of 8 canaries


def _tiny_run(folder, name: str) -> list[dict]:
    import copy
    import json

    from fedmem.config import build_config
    from fedmem.drivers.api import train_and_audit
    from tests.support.configs import TINY_OVERRIDES

    raw = copy.deepcopy(TINY_OVERRIDES)
    raw.update(name=name, mode="centralized", output={"dir": str(folder)})
    raw["federation"] = {**raw["federation"], "rounds": 1}
    train_and_audit(build_config(raw))
    lines = (folder / name / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _intervals(row: dict) -> dict:
    membership = row["membership"]["scores"]
    return {
        "exact": [g["exact_rate_ci"] for g in row["extraction"]["by_replicas"].values()],
        "injected": row["extraction"]["injected"]["exact_rate_ci"],
        "auc": {s: e["all"]["auc_ci"] for s, e in membership.items()},
        "exposure": [g["mean_ci"] for g in row["exposure"]["by_replicas"].values()],
    }


def test_a_tiny_run_records_intervals_and_a_rerun_repeats_them(tmp_path):
    from fedmem.runs.report import round_line

    first, again = _tiny_run(tmp_path, "a"), _tiny_run(tmp_path, "b")
    assert [_intervals(r) for r in first] == [_intervals(r) for r in again]
    final = first[-1]
    injected = final["extraction"]["injected"]
    assert injected["exact_rate_ci"][0] <= injected["exact_rate"] <= injected["exact_rate_ci"][1]
    for entry in final["membership"]["scores"].values():
        low, high = entry["all"]["auc_ci"]
        assert low <= entry["all"]["auc"] <= high
    assert " [" in round_line(final, 1).split("exact ", 1)[1].split("  ")[0]


def test_token_accuracy_carries_a_bootstrap_interval_over_canaries():
    metrics = extraction_metrics(*_results(5, 8), seed=3)
    group = metrics["injected"]
    assert group["token_accuracy"] == pytest.approx((5 * 1.0 + 3 * 0.5) / 8)
    low, high = group["token_accuracy_ci"]
    assert 0.5 <= low < group["token_accuracy"] < high <= 1.0
    assert extraction_metrics(*_results(5, 8), seed=3)["injected"]["token_accuracy_ci"] == [
        low, high]  # seeded: a rerun gives the same interval
    assert extraction_metrics(*_results(8, 8))["injected"]["token_accuracy_ci"] == [1.0, 1.0]
    assert extraction_metrics(*_results(1, 1))["injected"]["token_accuracy_ci"] is None
    assert registry.get("extraction").values({"extraction": metrics})[
        "token_accuracy_low"] == low


def test_the_terminal_table_shows_token_accuracy_with_its_interval():
    final = {"extraction": {**extraction_metrics(*_results(8, 8)), "decoding": "greedy",
                            "prefix_tokens": 8}}
    summary = {"name": "t", "mode": "simulation", "finetuning": "lora", "rounds": 1,
               "final": final, "before": final}
    console = Console(width=400, record=True)
    console.print(summary_table(summary))
    text = console.export_text()
    assert "token acc, % [95% CI]" in text and "100.0 % [100.0, 100.0]" in text


def test_the_canary_loss_gap_carries_a_bootstrap_interval_over_pairs():
    from fedmem.audits.canary_loss_gap import gap_metrics

    canaries = {f"c{i}": SimpleNamespace(replicas=4, twin_id=f"t{i}") for i in range(6)}
    canaries |= {f"t{i}": SimpleNamespace(replicas=0, twin_id=None) for i in range(6)}
    loss = {f"c{i}": 0.5 + 0.1 * i for i in range(6)} | {f"t{i}": 3.0 for i in range(6)}
    gap = gap_metrics(loss, canaries, seed=1)
    low, high = gap["gap_ci"]
    assert low < gap["gap"] < high
    assert (low, high) == pytest.approx((3.0 - 0.5 - 0.1 * 5, 3.0 - 0.5), abs=0.26)
    assert gap["by_replicas"]["4"]["gap_ci"] == [low, high]
    one = gap_metrics({"c0": 1.0, "t0": 2.0}, {k: canaries[k] for k in ("c0", "t0")})
    assert one["gap"] == 1.0 and one["gap_ci"] is None  # one pair: no interval
    values = registry.get("canary_loss_gap").values({"canary_loss_gap": gap})
    assert (values["canary_loss_gap_low"], values["canary_loss_gap_high"]) == (low, high)


def test_a_perfect_rmia_attack_reaches_its_stated_maximum_below_one():
    """RMIA's non-members are their own leave-one-out population, so the best non-member of
    each kind scores 1 like a member that beats them all: the entry states that maximum, and
    the terminal shows it beside an AUC that reaches it."""
    import numpy as np

    from fedmem.audits.membership import _rmia, _score_entry, membership_table

    samples = _samples(10)  # per kind: 5 members, 5 non-members
    inputs = [SimpleNamespace(scores=SimpleNamespace(logprob=np.array([(1.0 if s.member else
                                                                        -1.0) - 0.01 * i])),
                              reference=SimpleNamespace(logprob=np.array([-1.0])))
              for i, s in enumerate(samples)]
    mia = SimpleNamespace(rmia_offline_a=1.0, rmia_gamma=1.0)
    config = SimpleNamespace(seed=0, attack=SimpleNamespace(membership=mia),
                             canaries=SimpleNamespace(replica_counts=(4,)))
    values = _rmia(config, samples, inputs)
    entry, _ = _score_entry(config, samples, values, top=1.0)
    assert entry["canaries"]["auc"] == entry["canaries"]["auc_max"] == 1 - 1 / (2 * 5)
    assert entry["all"]["auc"] == entry["all"]["auc_max"] == 1 - 2 / (2 * 10)
    assert "auc_max" not in _score_entry(config, samples, values)[0]["all"]
    row = {"round": 1, "membership": {"members": 10, "nonmembers": 10,
                                      "scores": {"rmia": entry}}}
    console = Console(width=300, record=True)
    console.print(membership_table(row))
    assert "(max 0.900)" in console.export_text()


def test_the_dp_audit_records_auroc_carries_a_bootstrap_interval():
    import numpy as np

    from fedmem.audits.dp.run_audit import one_run_statistic

    rng = np.random.default_rng(0)
    included, excluded = rng.normal(1.0, 1.0, 100), rng.normal(0.0, 1.0, 100)
    facts = one_run_statistic(included, excluded, 1e-5, 0.05)
    low, high = facts["auroc_ci"]
    assert low < facts["auroc"] < high and low > 0.5 and high < 1.0
    assert one_run_statistic(included, excluded, 1e-5, 0.05)["auroc_ci"] == [low, high]


def test_the_dp_audit_auroc_of_alike_scores_is_at_chance_where_the_hull_is_not():
    """jax-privacy's AUROC is the area under the ROC's upper hull, above 0.5 for scores drawn
    alike; the AUROC the audit reports is Mann-Whitney's, whose interval holds 0.5."""
    import numpy as np

    from fedmem.audits.dp.run_audit import one_run_statistic

    rng = np.random.default_rng(0)
    facts = one_run_statistic(rng.normal(0, 1, 100), rng.normal(0, 1, 100), 1e-5, 0.05)
    low, high = facts["auroc_ci"]
    assert low < 0.5 < high and abs(facts["auroc"] - 0.5) < 0.06
    assert facts["auroc_hull"] > facts["auroc"] + 0.03


def test_the_utility_line_gives_qa_accuracy_with_its_interval_and_a_readable_perplexity():
    from fedmem.audits.intervals import rate_ci
    from fedmem.audits.utility import details

    utility = {"qa_accuracy": 8 / 30, "qa_accuracy_ci": rate_ci(8, 30), "qa_n": 30,
               "mcq_accuracy": None, "mcq_accuracy_ci": None, "mcq_n": 0}
    summary = {"before": {"heldout_loss": 3.662},
               "final": {"heldout_loss": 49.0, "heldout_perplexity": 1.9e21, "utility": utility}}
    (line,) = details(summary)
    assert "QA answer match 26.7 % [12.3, 45.9] of 30" in line
    assert "(perplexity 1.9e+21)" in line and "no MCQ held out" in line
