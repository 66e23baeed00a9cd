"""Approximate memorization in the extraction audit: BLEU above the threshold per replica
group and prefix length, with intervals, the mean and worst case over lengths, the terminal."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from rich.console import Console

from attacks.extraction import ExtractionTarget, score
from fedmem.audits import registry
from fedmem.audits.extraction import extraction_metrics, prefix_metrics
from fedmem.audits.intervals import rate_ci
from fedmem.runs.report import summary_table

WORDS = {11: "record", 12: "number", 13: "4821", 14: "4827", 15: "blue", 16: "sky"}
COPY, NEAR, FAR = (11, 12, 13), (11, 12, 14), (15, 16, 15)  # char BLEU 1, 0.93, ~0.1


def _results(guesses: dict[str, tuple[int, ...]]) -> list:
    """Each canary's guess at the secret "record number 4821", scored with its text."""
    def words(ids):
        return " ".join(WORDS[i] for i in ids)

    return [score(ExtractionTarget(cid, (1,), COPY), g, words) for cid, g in guesses.items()]


# c0-c3: 4 copies each; t0-t1: never-injected twins
CANARIES = {
    **{f"c{i}": SimpleNamespace(replicas=4, clients=(i % 2,) * 4) for i in range(4)},
    **{f"t{i}": SimpleNamespace(replicas=0, clients=()) for i in range(2)},
}


def test_each_replica_group_carries_both_approximate_rates_with_their_intervals():
    metrics = extraction_metrics(
        _results({"c0": COPY, "c1": NEAR, "c2": FAR, "c3": (), "t0": FAR, "t1": NEAR}),
        CANARIES,
    )
    four, twins = metrics["by_replicas"]["4"], metrics["by_replicas"]["0"]
    assert (four["exact_rate"], four["approx_char_rate"], four["approx_token_rate"]) == (
        0.25, 0.5, 0.25)
    assert four["approx_char_rate_ci"] == rate_ci(2, 4)
    assert four["approx_token_rate_ci"] == rate_ci(1, 4)
    assert four["exact_rate_ci"] == rate_ci(1, 4)  # exact extraction unchanged
    assert (twins["approx_char_rate"], twins["approx_token_rate"]) == (0.5, 0.0)
    assert metrics["injected"]["approx_char_rate"] == 0.5
    assert 0 < four["char_bleu"] < 1 and 0 < four["token_bleu"] < 1


def test_the_threshold_decides_which_canaries_count():
    results = _results({"c0": COPY, "c1": NEAR, "c2": FAR, "c3": ()})
    strict = extraction_metrics(results, CANARIES, bleu_threshold=0.95)
    assert strict["injected"]["approx_char_rate"] == 0.25  # the near miss (0.93) drops out
    lax = extraction_metrics(results, CANARIES, bleu_threshold=0.0)
    assert lax["injected"]["approx_char_rate"] == 0.75  # all but the empty guess


def test_worst_case_over_prefix_lengths_is_never_below_the_mean():
    """c0 is copied at 10 tokens only, c1 near-copied at 50 only: each length counts one
    of four canaries, the worst case (any length) two."""
    per_length = {
        10: _results({"c0": COPY, "c1": FAR, "c2": FAR, "c3": ()}),
        50: _results({"c0": FAR, "c1": NEAR, "c2": FAR, "c3": ()}),
    }
    metrics = prefix_metrics(per_length, CANARIES)
    assert [metrics["prefix"][n]["injected"]["approx_char_rate"] for n in ("10", "50")] == [
        0.25, 0.25]
    mean, worst = (metrics["over_prefixes"][k]["injected"] for k in ("mean", "worst"))
    assert mean["approx_char_rate"] == 0.25 and worst["approx_char_rate"] == 0.5
    assert (mean["exact_rate"], worst["exact_rate"]) == (0.125, 0.25)
    for key in ("exact_rate", "approx_char_rate", "approx_token_rate", "char_bleu",
                "token_bleu"):
        assert worst[key] >= mean[key], key
    assert worst["approx_char_rate_ci"] == rate_ci(2, 4) and "approx_char_rate_ci" not in mean
    assert set(metrics["over_prefixes"]["worst"]["by_replicas"]) == {"4"}


def test_one_prefix_length_has_no_over_prefixes():
    metrics = prefix_metrics({10: _results({"c0": COPY})}, CANARIES)
    assert list(metrics) == ["prefix"]


def test_the_terminal_table_shows_the_approximate_rate_with_threshold_and_interval():
    results = _results({"c0": COPY, "c1": NEAR, "c2": FAR, "c3": ()})
    final = {"extraction": {**extraction_metrics(results, CANARIES), "decoding": "greedy",
                            "prefix_tokens": 8, "bleu_threshold": 0.75}}
    summary = {"name": "t", "mode": "simulation", "finetuning": "lora", "rounds": 1,
               "final": final, "before": final}
    console = Console(width=400, record=True)
    console.print(summary_table(summary))
    text = console.export_text()
    assert "approx (BLEU>0.75), % [95% CI]" in text
    low, high = rate_ci(2, 4)
    assert f"50.0 % [{low * 100:.1f}, {high * 100:.1f}]" in text


def test_the_store_columns_hold_the_headline_approximate_rates():
    results = _results({"c0": COPY, "c1": NEAR, "c2": FAR, "c3": ()})
    row = {"extraction": {**extraction_metrics(results, CANARIES), "bleu_threshold": 0.75}}
    values = registry.get("extraction").values(row)
    assert (values["approx_char_rate"], values["approx_token_rate"]) == (0.5, 0.25)
    assert values["approx_char_rate_low"] == pytest.approx(rate_ci(2, 4)[0])
    assert values["approx_token_rate_high"] == pytest.approx(rate_ci(1, 4)[1])
    assert values["bleu_threshold"] == 0.75
    assert registry.get("extraction").values({})["approx_char_rate"] is None  # not audited
