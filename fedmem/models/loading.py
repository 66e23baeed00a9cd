"""Causal LMs: the offline tiny Llama, SmolLM2-135M, any hub/local model, LoRA presets per
model family, device and dtype placement, and the trainable state.

Clients and server exchange only the *trainable state*: the LoRA adapter under
`finetuning = "lora"`, every weight under `"full"`. It travels as fp32 numpy arrays in the
order of `trainable_names`, because Flower's records convert through `.numpy()` (which fails
on bf16); `set_trainable_state` casts back to the model's own dtype and device.

New-token audit records (`dp_audit.record_design = "new_token"`) need tokens no data holds:
`load_tokenizer` adds them, `load_base_model` gives the model rows for them, drawn from the
run seed (`new_token_rows`), so every process (server, Ray client actors, the LLR reference,
re-audits) loads the same model; under LoRA those rows are trainable (peft's
`trainable_token_indices`), or a canary could not be learned. Other runs are unchanged.
"""

from __future__ import annotations

import os
import socket
import warnings
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from fedmem.cache import cache_root
from fedmem.config import LLAMA_PROJECTIONS, Config, ConfigError
from fedmem.data.audit_records import new_tokens
from fedmem.seeding import derive_seed

TINY_LLAMA = "tiny-llama"
SMOLLM2 = "smollm2-135m"

# LoRA target modules per `config.model_type`, used when `lora.target_modules` is empty.
LORA_PRESETS: dict[str, tuple[str, ...]] = {
    "llama": LLAMA_PROJECTIONS,
    "mistral": LLAMA_PROJECTIONS,
    "qwen2": LLAMA_PROJECTIONS,
    "qwen3": LLAMA_PROJECTIONS,
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}
# Families whose linear layers are transposed Conv1D modules (peft's fan_in_fan_out).
CONV1D_FAMILIES = ("gpt2",)
# Seed stream of the embedding rows of new-token audit records.
NEW_TOKEN_ROWS = "new-token-rows"
# Seconds to wait for the hub before declaring the machine offline.
HUB_PROBE_TIMEOUT = 3.0

# Weight-loading progress bars would print once per client per round.
hf_logging.disable_progress_bar()


def base_model_source(config: Config) -> str:
    """Where the base model and tokenizer load from: a cached folder for the tiny Llama
    (built once) and SmolLM2 (converted once), a local folder, or a hub id that is in the
    local Hugging Face cache or reachable; anything else is a one-line ConfigError."""
    name = config.model.name
    if name == TINY_LLAMA:
        from fedmem.models.tiny_llama import ensure_tiny_base

        return str(ensure_tiny_base(config.model))
    if name == SMOLLM2:
        from fedmem.models.smollm2 import ensure_smollm2

        return str(ensure_smollm2(cache_root()))
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise ConfigError(f"model.name = {name!r}: no such model folder")
    check_hub_reachable(name)
    return name


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def check_hub_reachable(repo_id: str) -> None:
    """Fail fast, in one line, when a hub model is neither cached nor downloadable: offline
    mode (HF_HUB_OFFLINE) or a hub that does not answer within HUB_PROBE_TIMEOUT seconds,
    instead of transformers' retries."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    key = f"model.name = {repo_id!r}"
    if hub_offline():
        raise ConfigError(
            f"{key}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            f"download it first (`hf download {repo_id}`) or give a local folder"
        )
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=HUB_PROBE_TIMEOUT).close()
    except OSError as err:
        raise ConfigError(
            f"{key}: not in the local Hugging Face cache and {endpoint} is unreachable "
            f"({err.strerror or err}); download it where there is network, or give a local folder"
        ) from None


@lru_cache(maxsize=4)
def load_tokenizer(config: Config) -> PreTrainedTokenizerBase:
    source = base_model_source(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model.name = {config.model.name!r}: cannot load tokenizer: {str(err).splitlines()[0]}"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    added = new_tokens(config)
    if added:
        if any(t in tokenizer.get_vocab() for t in added):
            raise ConfigError(
                f"dp_audit.record_design = 'new_token': the tokenizer of {config.model.name!r} "
                "already has a token named like the audit's new tokens"
            )
        tokenizer.add_tokens(list(added), special_tokens=True)
    if config.model.chat_template and not tokenizer.chat_template:
        raise ConfigError(
            f"model.chat_template = true: the tokenizer of {config.model.name!r} has no chat "
            "template"
        )
    return tokenizer


def model_device(config: Config) -> torch.device:
    """`model.device`; "auto" is cuda when a GPU is visible, else cpu."""
    if config.model.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.model.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device = 'cuda': no CUDA device is visible to this process")
    return torch.device(config.model.device)


def model_dtype(config: Config, device: torch.device) -> torch.dtype:
    """`model.dtype`; "auto" is bf16 on a GPU that supports it (else fp16), fp32 on cpu."""
    if config.model.dtype != "auto":
        return getattr(torch, config.model.dtype)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_base_model(config: Config) -> torch.nn.Module:
    """The pre-fine-tuning model on its device and in its dtype (fp32 on cpu by default),
    identical in every process that loads it."""
    source = base_model_source(config)
    device = model_device(config)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=model_dtype(config, device))
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model.name = {config.model.name!r}: cannot load model: {str(err).splitlines()[0]}"
        ) from None
    add_new_token_rows(model, config)
    return model.to(device)


def new_token_ids(config: Config) -> list[int]:
    """Token ids of the new-token audit records' tokens (empty when there are none)."""
    added = new_tokens(config)
    return load_tokenizer(config).convert_tokens_to_ids(list(added)) if added else []


def add_new_token_rows(model: torch.nn.Module, config: Config) -> None:
    """Give `model` embedding rows for the new tokens, identical in every process: the
    matrix grows to the tokenizer's length if it is shorter (transformers' own new rows are
    then overwritten), and each new token's row is the mean of the other rows plus Gaussian
    noise of their per-coordinate spread, drawn from the run seed (the distribution of
    transformers' mean resizing, made deterministic). An untied output matrix gets rows
    drawn the same way from its own rows; a tied one shares the input rows."""
    added = new_tokens(config)
    if not added:
        return
    tokenizer = load_tokenizer(config)  # once: ids and size from the same tokenizer
    ids = tokenizer.convert_tokens_to_ids(list(added))
    size = len(tokenizer)
    if model.get_input_embeddings().weight.shape[0] < size:
        model.resize_token_embeddings(size, mean_resizing=False)
    generator = torch.Generator().manual_seed(derive_seed(config.seed, NEW_TOKEN_ROWS))
    index = torch.tensor(ids)
    keep = torch.ones(model.get_input_embeddings().weight.shape[0], dtype=torch.bool)
    keep[index] = False
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(output.weight)
    with torch.no_grad():
        for weight in matrices:
            old = weight[keep].to(torch.float32)  # [kept tokens, hidden]
            noise = torch.randn(len(ids), weight.shape[1], generator=generator)
            rows = old.mean(0) + noise * old.std(0)  # [new tokens, hidden]
            weight[index] = rows.to(weight.dtype)


def lora_target_modules(config: Config, model: torch.nn.Module) -> tuple[str, ...]:
    """`lora.target_modules` when given, else the preset of the model's family."""
    if config.lora.target_modules:
        return config.lora.target_modules
    family = getattr(model.config, "model_type", "")
    if family not in LORA_PRESETS:
        raise ConfigError(
            f"lora.target_modules: no preset for model_type {family!r} (presets: "
            f"{', '.join(sorted(LORA_PRESETS))}); list the modules to adapt"
        )
    return LORA_PRESETS[family]


def build_model(config: Config, seed: int = 0) -> torch.nn.Module:
    """The model clients train: the base model, wrapped with LoRA when configured."""
    model = load_base_model(config)
    if config.model.gradient_checkpointing:
        # Non-reentrant checkpointing also works when only LoRA adapters require grads.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.model.finetuning == "lora":
        from peft import LoraConfig, get_peft_model

        lora = config.lora
        targets = lora_target_modules(config, model)
        # New-token rows must train, or a new-token record could not be learned.
        trainable_tokens = new_token_ids(config) or None
        # LoRA's A matrices are drawn from torch's RNG; seed so every process agrees.
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            # peft reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning
            # on every client of every round, about code that is not ours).
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated")
            model = get_peft_model(
                model,
                LoraConfig(
                    r=lora.rank,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=list(targets),
                    fan_in_fan_out=model.config.model_type in CONV1D_FAMILIES,
                    task_type="CAUSAL_LM",
                    trainable_token_indices=trainable_tokens,
                ),
            )
    return model


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
