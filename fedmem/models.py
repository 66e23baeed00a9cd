"""Causal LMs: the offline tiny Llama, hub/local models, LoRA, and the trainable state.

Clients and server exchange only the *trainable state*: the LoRA adapter under
`finetuning = "lora"`, every weight under `"full"`. It travels as fp32 numpy arrays in the
order of `trainable_names`, because Flower's records convert through `.numpy()`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from fedmem.config import Config, ConfigError, ModelConfig

TINY_LLAMA = "tiny-llama"

# Weight-loading progress bars would print once per client per round.
hf_logging.disable_progress_bar()


def cache_root() -> Path:
    """Where built artefacts (tokenizer, warm-started base model) are cached."""
    return Path(os.environ.get("FEDMEM_CACHE_DIR", Path.home() / ".cache" / "fedmem"))


def tiny_llama_config(model: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=model.hidden_size,
        intermediate_size=model.intermediate_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_heads,
        num_key_value_heads=model.num_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def base_model_dir(config: Config) -> Path:
    """Folder holding the base model and tokenizer (built once for the tiny Llama)."""
    if config.model.name == TINY_LLAMA:
        from fedmem.pretraining import ensure_tiny_base

        return ensure_tiny_base(config.model)
    return Path(config.model.name)


@lru_cache(maxsize=4)
def load_tokenizer(config: Config) -> PreTrainedTokenizerBase:
    source = base_model_dir(config) if config.model.name == TINY_LLAMA else config.model.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model.name = {config.model.name!r}: cannot load tokenizer: {str(err).splitlines()[0]}"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(config: Config) -> torch.nn.Module:
    """The pre-fine-tuning model in fp32, identical in every process that loads it."""
    source = base_model_dir(config) if config.model.name == TINY_LLAMA else config.model.name
    try:
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model.name = {config.model.name!r}: cannot load model: {str(err).splitlines()[0]}"
        ) from None
    return model


def build_model(config: Config, seed: int = 0) -> torch.nn.Module:
    """The model clients train: the base model, wrapped with LoRA when configured."""
    model = load_base_model(config)
    if config.model.finetuning == "lora":
        from peft import LoraConfig, get_peft_model

        lora = config.lora
        # LoRA's A matrices are drawn from torch's RNG; seed so every process agrees.
        torch.manual_seed(seed)
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora.rank,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
                task_type="CAUSAL_LM",
            ),
        )
    return model


def new_tiny_llama(
    model: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int
) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(model, tokenizer))


def trainable_names(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def get_trainable_state(model: torch.nn.Module) -> list[np.ndarray]:
    """Trainable parameters as fp32 numpy arrays, in `trainable_names` order."""
    return [
        p.detach().to(torch.float32).cpu().numpy().copy()
        for _, p in model.named_parameters()
        if p.requires_grad
    ]


def set_trainable_state(model: torch.nn.Module, arrays: list[np.ndarray]) -> None:
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    if len(params) != len(arrays):
        raise ValueError(f"expected {len(params)} trainable arrays, got {len(arrays)}")
    with torch.no_grad():
        for p, a in zip(params, arrays, strict=True):
            if tuple(p.shape) != tuple(a.shape):
                raise ValueError(f"shape mismatch: {tuple(p.shape)} vs {tuple(a.shape)}")
            p.copy_(torch.from_numpy(np.asarray(a)).to(dtype=p.dtype, device=p.device))


def state_nbytes(arrays: list[np.ndarray]) -> int:
    return int(sum(a.nbytes for a in arrays))
