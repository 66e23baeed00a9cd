"""The report's verdict: what leaked, from which vantage point, under which mitigation, at
what utility cost; a finding not made is given with the interval that bounds it."""

import json

import pandas as pd

from fedmem.runs.verdict import (
    client_view_lines,
    dp_lines,
    extraction_line,
    membership_line,
    utility_line,
)


def _final(rates: dict[int, tuple[float, int]], seeds: int = 1) -> pd.DataFrame:
    """Final rows (one per seed) with extraction.by_replicas.<r>.exact_rate and .n."""
    row = {}
    for replicas, (rate, n) in rates.items():
        row[f"extraction.by_replicas.{replicas}.exact_rate"] = rate
        row[f"extraction.by_replicas.{replicas}.n"] = n
    return pd.DataFrame([row] * seeds)


def test_a_group_above_the_twins_is_named_with_its_counts_interval_and_p():
    line = extraction_line(_final({0: (0.0, 16), 1: (0.0, 8), 8: (0.75, 8)}, seeds=2))
    assert line.startswith("LEAKED")
    assert "8x (12/16, 75.0 % [47.6, 92.7], Holm-adjusted p = " in line
    assert "1x" not in line  # 0 of 16 is not above the twins
    assert "twins 0/32, 0.0 % [0.0, 10.9]" in line


def test_no_extraction_is_reported_with_the_interval_that_bounds_it_not_as_safe():
    line = extraction_line(_final({0: (0.0, 16), 1: (0.0, 8), 4: (0.0, 8)}))
    assert line == ("no exact extraction detected (global model): injected 0/16, "
                    "0.0 % [0.0, 20.6]; twins 0/16, 0.0 % [0.0, 20.6]")
    assert "safe" not in line


def test_extraction_the_twins_reach_too_is_not_called_a_leak():
    line = extraction_line(_final({0: (0.25, 8), 4: (0.25, 8)}))
    assert line.startswith("exact extraction (global model) not above the twins' level")
    assert "injected 2/8" in line and "twins 2/8" in line


def test_without_twins_no_leak_is_called():
    line = extraction_line(_final({4: (1.0, 8)}))
    assert "no never-injected twins to compare with" in line and "LEAKED" not in line


def _runs(aucs: list[tuple[float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"mia_score": "reference", "mia_auc": a, "mia_auc_low": lo,
                          "mia_auc_high": hi, "mia_nonmembers": 62} for a, lo, hi in aucs])


def test_an_auc_interval_above_chance_says_members_are_distinguishable():
    line = membership_line(_runs([(0.81, 0.72, 0.90)]))
    assert line == ("membership inference (reference, global model): AUC 0.810 [0.720, 0.900] "
                    "(bootstrap over 62 non-members): members distinguishable from non-members")


def test_an_auc_interval_over_chance_is_not_a_finding_either_way():
    line = membership_line(_runs([(0.55, 0.41, 0.69), (0.57, 0.43, 0.71)]))
    assert "t-interval over 2 seeds" in line
    assert line.endswith("not distinguishable from chance at this power")


def test_utility_cost_reads_perplexity_before_and_after_fine_tuning():
    runs = pd.DataFrame({"run_id": ["a", "b"], "heldout_perplexity": [90.0, 92.0]})
    rounds = pd.DataFrame({"run_id": ["a", "a", "b", "b", "other"], "round": [0, 1, 0, 1, 0],
                           "heldout_perplexity": [180.0, 90.0, 190.0, 92.0, 5.0]})
    line = utility_line(runs, rounds)
    assert line.startswith("utility: held-out perplexity 185.0 [")
    assert "before fine-tuning -> 91.0 [" in line


def test_the_servers_view_of_each_client_is_given_where_it_was_audited():
    final = pd.DataFrame([{"client_view.clients.1.extraction.injected.exact_rate": 0.5,
                           "client_view.clients.1.extraction.injected.n": 8}])
    assert client_view_lines(final) == [
        "server's view of client 1's update: exact extraction 4/8, 50.0 % [15.7, 84.3] of its "
        "injected canaries"]


def test_a_dp_audit_verdict_names_the_claim_the_bound_and_the_ceiling(tmp_path):
    record = {"epsilon_claimed": 8.0, "epsilon_one_run": 0.4, "epsilon_one_run_fdp": None,
              "epsilon_ceiling_one_run": 2.5, "verdict": "inconclusive"}
    (tmp_path / "summary.json").write_text(json.dumps({"dp_audit": {"record": record}}))
    assert dp_lines([str(tmp_path)]) == [
        f"DP audit (record level, {tmp_path.name}): claimed epsilon 8.000, empirical lower "
        "bound 0.400, ceiling 2.500: inconclusive"]
