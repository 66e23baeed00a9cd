"""Membership inference: each score by hand on fixed logits; AUC at chance before training
and near 1 after memorizing; ROC summaries."""

from __future__ import annotations

import math
import zlib
from types import SimpleNamespace

import pytest
import torch

from attacks.likelihood import token_logprobs
from attacks.membership import SCORES, Sample, roc
from tests.support.attack_models import memorize, short_texts, tiny_model, tokenizer

ROW = [0, 1, 2, 1, 0]
TEXT = "a fixed text"
LOGITS = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [-1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [1.0, -2.0, 0.5]]
REFERENCE = [[0.0, 1.0, 0.0], [0.0, 0.0, 2.0], [1.0, 1.0, 1.0], [2.0, 0.0, 0.0], [0.0] * 3]


class FixedLogits(torch.nn.Module):
    """A 'model' that returns the same logits for every row, whatever its tokens."""

    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__()
        self.table = torch.tensor(logits)
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **_):
        rows, width = input_ids.shape
        return SimpleNamespace(logits=self.table[:width].expand(rows, width, -1))


def _logp(logits: list[float], token: int) -> float:
    return logits[token] - math.log(sum(math.exp(v) for v in logits))


def _hand_token_logps(table) -> list[float]:
    return [_logp(table[t - 1], ROW[t]) for t in range(1, len(ROW))]  # -1.55, -1.23, ...


def _sample(k_moments: bool = True) -> Sample:
    scores = token_logprobs(FixedLogits(LOGITS), [ROW], pad_id=0, moments=k_moments)[0]
    ref = token_logprobs(FixedLogits(REFERENCE), [ROW], pad_id=0)[0]
    return Sample(TEXT, scores, ref)


def test_loss_score_is_the_mean_token_log_probability():
    assert SCORES["loss"](_sample(), 0.2) == pytest.approx(sum(_hand_token_logps(LOGITS)) / 4)


def test_zlib_score_divides_the_loss_by_the_compressed_length():
    loss = -sum(_hand_token_logps(LOGITS)) / 4
    expected = -loss / len(zlib.compress(TEXT.encode()))
    assert SCORES["zlib"](_sample(), 0.2) == pytest.approx(expected)


def test_min_k_averages_the_least_likely_fraction_of_tokens():
    lps = sorted(_hand_token_logps(LOGITS))
    assert SCORES["min_k"](_sample(), 0.5) == pytest.approx((lps[0] + lps[1]) / 2)
    assert SCORES["min_k"](_sample(), 0.1) == pytest.approx(lps[0])  # at least one token


def test_min_k_plus_plus_standardizes_by_the_next_token_distribution():
    z = []
    for t in range(1, len(ROW)):
        logits = LOGITS[t - 1]
        logps = [_logp(logits, v) for v in range(3)]
        mean = sum(math.exp(lp) * lp for lp in logps)
        std = math.sqrt(sum(math.exp(lp) * (lp - mean) ** 2 for lp in logps))
        z.append((logps[ROW[t]] - mean) / std)
    z.sort()
    assert SCORES["min_k_plus_plus"](_sample(), 0.5) == pytest.approx((z[0] + z[1]) / 2)


def test_reference_score_is_how_much_lower_the_loss_is_than_the_reference_loss():
    expected = sum(_hand_token_logps(LOGITS)) / 4 - sum(_hand_token_logps(REFERENCE)) / 4
    assert SCORES["reference"](_sample(), 0.2) == pytest.approx(expected)


def test_roc_auc_and_tpr_at_zero_false_positives_by_hand():
    result = roc([3.0, 2.0, 0.5, 1.0, 0.0, -1.0, 2.5], [True] * 3 + [False] * 4)
    assert result.auc == pytest.approx((4 + 3 + 2) / 12)
    # Four non-members resolve no FPR below 1/4: neither target is a measurement.
    assert result.tpr_at == {0.01: None, 0.001: None}
    assert result.fpr[0] == 0.0 and result.fpr[-1] == 1.0


def _all_scores(model, reference, tok, texts):
    rows = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
    scores = token_logprobs(model, rows, tok.pad_token_id, moments=True)
    refs = token_logprobs(reference, rows, tok.pad_token_id)
    samples = [Sample(t, s, r) for t, s, r in zip(texts, scores, refs, strict=True)]
    return {name: [f(s, 0.2) for s in samples] for name, f in SCORES.items()}


def test_auc_is_at_chance_on_a_model_that_trained_on_nothing():
    tok = tokenizer()
    texts = short_texts(160, seed=3)
    model = tiny_model(tok, seed=0)
    labels = [True] * 80 + [False] * 80
    for name, values in _all_scores(model, model, tok, texts).items():
        assert abs(roc(values, labels).auc - 0.5) < 0.12, name


def test_auc_is_near_one_on_a_model_trained_to_memorize_its_members():
    tok = tokenizer()
    texts = short_texts(24, seed=4)
    model, base = tiny_model(tok, seed=0), tiny_model(tok, seed=0)
    members = texts[:12]
    memorize(model, [tok(t)["input_ids"] + [tok.eos_token_id] for t in members], steps=120)
    labels = [True] * 12 + [False] * 12
    for name, values in _all_scores(model, base, tok, texts).items():
        assert roc(values, labels).auc > 0.95, name


# --- TPR at a low FPR only where the non-members can resolve it --------------------------


def _separable(nonmembers: int) -> tuple[list[float], list[bool]]:
    """Three members scoring above every non-member, then `nonmembers` non-members."""
    scores = [1e6, 1e6 + 1, 1e6 + 2] + [float(i) for i in range(nonmembers)]
    return scores, [True] * 3 + [False] * nonmembers


def test_tpr_at_an_fpr_the_non_members_cannot_resolve_is_none_not_the_tpr_at_fpr_zero():
    summary = roc(*_separable(62)).summary()
    assert summary["tpr_at_fpr_0.01"] is None and summary["tpr_at_fpr_0.001"] is None
    assert summary["nonmembers"] == 62


def test_tpr_at_an_fpr_is_reported_from_ceil_one_over_fpr_non_members():
    assert roc(*_separable(99)).tpr_at == {0.01: None, 0.001: None}
    assert roc(*_separable(100)).tpr_at == {0.01: 1.0, 0.001: None}
    assert roc(*_separable(1000)).tpr_at == {0.01: 1.0, 0.001: 1.0}


def test_the_terminal_table_says_how_many_non_members_an_unresolved_tpr_needs():
    from rich.console import Console

    from fedmem.audits.membership import membership_table

    entry = {"all": {"auc": 0.6, "tpr_at_fpr_0.01": None, "tpr_at_fpr_0.001": None,
                     "nonmembers": 62}}
    row = {"round": 3, "membership": {"members": 40, "nonmembers": 62,
                                      "scores": {"loss": entry}}}
    console = Console(width=300, record=True)
    console.print(membership_table(row))
    text = console.export_text()
    assert "n/a (needs ≥ 100 non-members)" in text
    assert "n/a (needs ≥ 1000 non-members)" in text


def test_the_store_reads_an_unresolvable_tpr_as_null_even_from_an_older_row():
    """Rows written before this rule hold the TPR at FPR 0 under the 0.1 % key."""
    from fedmem.audits.membership import AUDIT

    columns = {c.name: c.read for c in AUDIT.columns}
    entry = {"all": {"auc": 0.6, "tpr_at_fpr_0.01": 0.25, "tpr_at_fpr_0.001": 0.25}}
    old = {"membership": {"members": 40, "nonmembers": 500, "scores": {"loss": entry}}}
    assert columns["mia_tpr_at_1pct_fpr"](old) == 0.25
    assert columns["mia_tpr_at_01pct_fpr"](old) is None
    assert columns["mia_nonmembers"](old) == 500


# ------------------------------------------------------------- the audit's populations


def _dp_config(tiny_raw: dict, **membership):
    from fedmem.config import build_config

    attack = {**tiny_raw["attack"], "membership": membership}
    return build_config({**tiny_raw, "attack": attack, "dp_sgd": {"enabled": True}})


def test_qa_members_of_a_dp_run_are_training_qa_rows_never_audit_records_or_canaries(tiny_raw):
    from fedmem.audits.membership import membership_samples
    from fedmem.data.federated import build_federated_data
    from fedmem.models.loading import load_tokenizer

    config = _dp_config(tiny_raw, qa_members=10_000)  # as many as there are: every QA row
    data = build_federated_data(config, load_tokenizer)
    assert any(r.included for r in data.audit_records)  # the DP run trains on some
    injected = {c.text for c in (*data.canaries, *data.exposure_canaries)}
    injected |= {r.text for r in data.audit_records}
    members = [s.text for s in membership_samples(config) if s.kind == "qa" and s.member]
    assert not [t for t in members if t.startswith("audit ") or t in injected]
    qa_rows = {t for t in data.pooled_texts if t not in injected}
    assert set(members) == qa_rows


def test_qa_members_of_a_dp_run_are_those_of_the_same_run_without_dp(tiny_raw):
    """The audit records go in after the QA split and partition: removing them from the member
    pool leaves the pool, and the seeded sample drawn from it, as without DP."""
    from fedmem.audits.membership import membership_samples
    from fedmem.config import build_config

    def qa_members(config) -> list[str]:
        return [s.text for s in membership_samples(config) if s.kind == "qa" and s.member]

    assert qa_members(_dp_config(tiny_raw)) == qa_members(build_config(tiny_raw))


def test_the_audit_scores_the_configured_heldout_sample_and_says_of_how_many(tiny_raw):
    """A large federation's audit stays small: `data.heldout_sample` non-members (and as
    many training QA members), the same every round, with the populations they came from."""
    from fedmem.audits.membership import membership_samples, qa_populations
    from fedmem.config import build_config

    config = build_config({**tiny_raw, "data": {**tiny_raw["data"], "heldout_sample": 4}})
    qa = [s for s in membership_samples(config) if s.kind == "qa"]
    assert sum(not s.member for s in qa) == 4 and sum(s.member for s in qa) == 4
    assert qa_populations(config) == {
        "qa_members": 4,
        "qa_member_population": 108,  # 120 samples, 12 held out, all distinct
        "qa_nonmembers": 4,
        "qa_nonmember_population": 12,
    }
