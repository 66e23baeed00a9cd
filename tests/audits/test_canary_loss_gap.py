"""The canary loss gap: twins' secret loss minus injected canaries' secret loss, per replica
count; above 0 when training made the injected secrets likelier than unseen ones."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from attacks.loss_gap import loss_gap, secret_losses
from fedmem.audits.canary_loss_gap import AUDIT, gap_metrics
from fedmem.config import build_config
from fedmem.data.federated import build_federated_data
from fedmem.models.loading import build_model, load_tokenizer
from fedmem.training import encode_samples
from tests.support.attack_models import memorize


class Bigram(torch.nn.Module):
    """p(next token | this token) from a fixed table: log-probabilities known by hand."""

    def __init__(self, probs: list[list[float]]) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(probs, dtype=torch.float64).log())

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=self.logits[input_ids])


def test_gap_is_the_twins_mean_loss_minus_the_injected_mean_loss():
    assert loss_gap([1.0, 2.0], [3.0, 3.0]) == pytest.approx(1.5)
    assert loss_gap([2.0], [2.0]) == 0.0
    assert loss_gap([3.0], [1.0]) == pytest.approx(-2.0)  # the twins' secrets are likelier
    assert loss_gap([], [1.0]) is None and loss_gap([1.0], []) is None


def test_secret_loss_is_the_mean_negative_log_probability_of_the_secret_tokens_only():
    # token 0 -> 1 with p 0.5, 1 -> 2 with p 0.25, 2 -> 0 with p 0.125
    model = Bigram([[0.25, 0.5, 0.25], [0.5, 0.25, 0.25], [0.125, 0.375, 0.5]])
    rows = [[0, 1, 2, 0], [0, 1, 2, 0]]
    got = secret_losses(model, rows, secret_starts=[2, 3], pad_id=0, batch_size=1)
    assert got[0] == pytest.approx(-(math.log(0.25) + math.log(0.125)) / 2)  # tokens 2, 0
    assert got[1] == pytest.approx(-math.log(0.125))  # token 0 after 2 only


@pytest.mark.parametrize("start", [0, 4])
def test_a_secret_needs_a_token_before_it_and_one_in_it(start):
    model = Bigram([[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match="secret start"):
        secret_losses(model, [[0, 1, 0, 1]], [start], pad_id=0)


def test_each_replica_count_compares_its_canaries_with_their_own_twins():
    pairs = [("c1", 1, "c2"), ("c3", 4, "c4"), ("c5", 4, "c6")]
    canaries = {own: SimpleNamespace(replicas=r, twin_id=twin) for own, r, twin in pairs}
    canaries |= {twin: SimpleNamespace(replicas=0, twin_id=own) for own, _, twin in pairs}
    loss = {"c1": 2.0, "c2": 2.5, "c3": 0.5, "c4": 3.0, "c5": 1.5, "c6": 2.0}
    m = gap_metrics(loss, canaries)
    assert m["by_replicas"]["1"] == {"n": 1, "injected_loss": 2.0, "twin_loss": 2.5, "gap": 0.5,
                                     "gap_ci": None}  # one pair: no interval
    four = {k: v for k, v in m["by_replicas"]["4"].items() if k != "gap_ci"}
    assert four == {"n": 2, "injected_loss": 1.0, "twin_loss": 2.5, "gap": 1.5}
    assert m["by_replicas"]["4"]["gap_ci"] == [0.5, 2.5]  # the two pairs' own gaps
    assert (m["n"], m["gap"]) == (3, pytest.approx(2.5 - 4.0 / 3))


def _injected_rows(config) -> list[list[int]]:
    data = build_federated_data(config, load_tokenizer)
    texts = [c.text for c in data.canaries if c.injected]
    return encode_samples(load_tokenizer(config), texts, config.training.max_seq_len)


def test_a_model_that_memorized_the_injected_canaries_shows_a_positive_gap(tiny_raw):
    """The base model has seen neither injected canaries nor twins: its gap is near 0. After
    training on the injected canaries alone, every replica count's gap is clearly above 0."""
    config = build_config(tiny_raw)
    model = build_model(config)
    before = AUDIT.run(config, model).metrics["canary_loss_gap"]
    memorize(model, _injected_rows(config), steps=60)
    after = AUDIT.run(config, model).metrics["canary_loss_gap"]
    assert abs(before["gap"]) < 0.5
    assert set(after["by_replicas"]) == {"1", "4"}
    for group in after["by_replicas"].values():
        assert group["n"] == 2 and group["gap"] > 1.0
    assert after["injected_loss"] < before["injected_loss"]
