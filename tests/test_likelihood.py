"""Teacher-forced token log-probabilities: the one computation behind exposure and MIA."""

from __future__ import annotations

import torch

from attacks.likelihood import continuation_logprobs, split_continuation, token_logprobs
from tests.attack_models import tiny_model, tokenizer


def _by_hand(model, row: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([row])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return torch.stack([logp[t - 1, row[t]] for t in range(1, len(row))])


def test_padded_batches_equal_one_unpadded_row_at_a_time():
    tok = tokenizer()
    model = tiny_model(tok, seed=0)
    rows = [tok(t)["input_ids"] for t in ("Jane Roe, MRN 4829", "asthma", "PIN 0123 for Jane")]
    scores = token_logprobs(model, rows, tok.pad_token_id, batch_size=2)
    for row, s in zip(rows, scores, strict=True):
        assert torch.allclose(s.logprob, _by_hand(model, row), atol=1e-5)


def test_a_shared_context_scores_like_the_concatenated_row():
    tok = tokenizer()
    model = tiny_model(tok, seed=1)
    context = tok("Pharmacy refill PIN for Jane Roe:")["input_ids"]
    rows = [tok(" 0123")["input_ids"], tok(" 98")["input_ids"]]
    scores = token_logprobs(model, rows, tok.pad_token_id, context=context)
    for row, s in zip(rows, scores, strict=True):
        full = _by_hand(model, context + row)
        assert torch.allclose(s.logprob, full[len(context) - 1 :], atol=1e-5)


def test_moments_are_the_mean_and_std_of_log_p_under_the_model():
    tok = tokenizer()
    model = tiny_model(tok, seed=2)
    row = tok("Diagnosis: asthma")["input_ids"]
    s = token_logprobs(model, [row], tok.pad_token_id, moments=True)[0]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([row])).logits[0, 0].double(), -1)
    mean = (logp.exp() * logp).sum()
    var = (logp.exp() * (logp - mean) ** 2).sum()
    assert torch.isclose(s.mean[0], mean) and torch.isclose(s.std[0], var.sqrt())


def test_continuations_are_cut_from_the_whole_text_tokenization():
    tok = tokenizer()
    context, cont = split_continuation(tok, "PIN for Jane Roe:", " 0123")
    assert list(context) + list(cont) == tok("PIN for Jane Roe: 0123")["input_ids"]
    model = tiny_model(tok, seed=3)
    got = continuation_logprobs(model, tok, "PIN for Jane Roe:", [" 0123"])[0]
    full = _by_hand(model, list(context) + list(cont))
    assert abs(got - float(full[len(context) - 1 :].sum())) < 1e-5
