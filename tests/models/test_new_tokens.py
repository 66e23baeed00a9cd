"""New-token audit records' tokens (`dp_audit.record_design = "new_token"`): the tokenizer
gains one token per record, the model a row for each, the same in every process that loads
it; saved states load back; LoRA trains those rows; runs with the default design are
untouched."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fedmem.config import ConfigError, build_config
from fedmem.data.audit_records import new_tokens
from fedmem.models.loading import (
    build_model,
    get_trainable_state,
    load_base_model,
    load_tokenizer,
    new_token_ids,
    set_trainable_state,
    trainable_names,
)

NEW_TOKEN_AUDIT = {"records": 12, "record_design": "new_token", "inject": "always"}


def _config(tiny_raw, **model):
    return build_config({**tiny_raw, "model": {**tiny_raw["model"], **model},
                         "dp_audit": NEW_TOKEN_AUDIT})


def _fresh_process_load(config):
    """What another process (a Ray client actor, a re-audit) loads: nothing cached, and a
    global torch RNG in another state."""
    load_tokenizer.cache_clear()
    torch.manual_seed(12345)
    return load_tokenizer(config), load_base_model(config)


def test_the_tokenizer_gains_one_token_per_record_after_its_own_vocabulary(tiny_raw):
    plain = load_tokenizer(build_config(tiny_raw))
    size = len(plain)
    config = _config(tiny_raw)
    tokenizer = load_tokenizer(config)
    assert len(tokenizer) == size + 12
    assert new_token_ids(config) == list(range(size, size + 12))
    # Each new token is matched whole, also right after a word.
    ids = tokenizer("renal cyst" + new_tokens(config)[3])["input_ids"]
    assert ids[-1] == size + 3 and size + 3 not in ids[:-1]


def test_every_load_gives_the_same_tokenizer_and_new_embedding_rows(tiny_raw):
    config = _config(tiny_raw)
    tok_a, model_a = _fresh_process_load(config)
    tok_b, model_b = _fresh_process_load(config)
    assert tok_a.get_vocab() == tok_b.get_vocab()
    rows_a = model_a.get_input_embeddings().weight
    assert rows_a.shape[0] == len(tok_a)
    assert torch.equal(rows_a, model_b.get_input_embeddings().weight)
    # Tied output: the lm head shares the rows, so the new tokens can be predicted.
    assert model_a.get_output_embeddings().weight.data_ptr() == rows_a.data_ptr()
    ids = new_token_ids(config)
    assert len({tuple(r.tolist()) for r in rows_a[ids]}) == len(ids)  # distinct rows
    other_seed = build_config({**tiny_raw, "seed": 1, "dp_audit": NEW_TOKEN_AUDIT})
    assert not torch.equal(rows_a[ids], load_base_model(other_seed).get_input_embeddings()
                           .weight[ids])


def test_an_untied_output_matrix_gets_seeded_rows_of_its_own(tiny_raw, tmp_path):
    tokenizer = load_tokenizer(build_config(tiny_raw))
    torch.manual_seed(0)
    untied = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False,
    ))
    untied.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    config = _config(tiny_raw, name=str(tmp_path))
    _, a = _fresh_process_load(config)
    _, b = _fresh_process_load(config)
    ids = new_token_ids(config)
    assert a.get_output_embeddings().weight.shape[0] == len(tokenizer) + 12
    assert torch.equal(a.get_output_embeddings().weight, b.get_output_embeddings().weight)
    assert not torch.equal(a.get_output_embeddings().weight[ids],
                           a.get_input_embeddings().weight[ids])


def test_a_saved_state_loads_into_a_freshly_built_model_full_and_lora(tiny_raw):
    for finetuning in ("full", "lora"):
        config = _config(tiny_raw, finetuning=finetuning)
        trained = build_model(config, seed=0)
        with torch.no_grad():
            for p in trained.parameters():
                if p.requires_grad:
                    p.add_(0.01)
        state = get_trainable_state(trained)
        load_tokenizer.cache_clear()
        fresh = build_model(config, seed=0)
        set_trainable_state(fresh, state)
        assert all((a == b).all() for a, b in zip(get_trainable_state(fresh), state, strict=True))


def test_under_lora_the_new_token_rows_are_trainable(tiny_raw):
    config = _config(tiny_raw, finetuning="lora")
    model = build_model(config, seed=0)
    token_params = [n for n in trainable_names(model) if "trainable_tokens" in n]
    assert len(token_params) == 1
    delta = dict(model.named_parameters())[token_params[0]]
    assert delta.shape[0] == len(new_token_ids(config))
    # A gradient of the loss on a new token reaches those rows.
    ids = torch.tensor([[5, 6, new_token_ids(config)[0]]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert delta.grad is not None and delta.grad.abs().sum() > 0


def test_runs_with_random_records_keep_the_tokenizer_and_model_as_they_were(tiny_raw):
    plain = build_config(tiny_raw)
    random_dp = build_config({**tiny_raw, "dp_sgd": {"enabled": True}})
    assert random_dp.dp_audit.record_design == "random"
    assert new_tokens(random_dp) == () and new_token_ids(random_dp) == []
    assert len(load_tokenizer(random_dp)) == len(load_tokenizer(plain))
    assert torch.equal(load_base_model(random_dp).get_input_embeddings().weight,
                       load_base_model(plain).get_input_embeddings().weight)
    # No new tokens either where the run trains on no audit records.
    unused = build_config({**tiny_raw, "dp_audit": {"record_design": "new_token"}})
    assert new_tokens(unused) == ()


def test_dp_sgd_under_lora_with_new_token_records_is_refused_in_one_line(tiny_raw):
    # opacus has no per-sample gradient for peft's trainable-token rows.
    raw = {**tiny_raw, "model": {**tiny_raw["model"], "finetuning": "lora"},
           "dp_sgd": {"enabled": True}, "dp_audit": {"record_design": "new_token"}}
    with pytest.raises(ConfigError, match=r"^dp_audit.record_design = 'new_token': not with DP"):
        build_config(raw)
    build_config({**raw, "dp_sgd": {"enabled": False}})  # LoRA without DP-SGD trains them
