"""The offline base model: a byte-level BPE tokenizer and a tiny Llama warm-started on
public, canary-free text (ICD-10-CM descriptions, public QA, note-shaped public records).

Built once per model configuration and cached under `cache_root()/base/<hash>`; the folder
is written to a temporary name and renamed, under a file lock, so concurrent processes
(server and Ray workers) never see half of it.
"""

from __future__ import annotations

import fcntl
import math
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from fedmem import progress
from fedmem.cache import cache_root
from fedmem.config import TINY_LLAMA_POSITIONS, ModelConfig, config_hash


def tiny_llama_config(model: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=model.hidden_size,
        intermediate_size=model.intermediate_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_heads,
        num_key_value_heads=model.num_heads,
        max_position_embeddings=TINY_LLAMA_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def new_tiny_llama(
    model: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int
) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(model, tokenizer))


# Bump when the recipe below changes, so stale caches are not reused.
RECIPE_VERSION = 2
PRETRAIN_SEED = 0
PRETRAIN_BLOCK = 128
PRETRAIN_BATCH = 16
SPECIAL_TOKENS = {"eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}


def ensure_tiny_base(model: ModelConfig) -> Path:
    """Return the cached base folder for this tiny-Llama shape, building it if missing."""
    recipe = {k: v for k, v in asdict(model).items() if k not in ("name", "finetuning")}
    key = config_hash(RECIPE_VERSION, recipe)
    return build_once(cache_root() / "base" / key, lambda tmp: build_tiny_base(model, tmp))


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """The model folder `target`, built by `build(tmp)` the first time only: under a file
    lock (parallel clients wait rather than build twice), into a temporary folder renamed
    into place, so a folder with config.json is always complete."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            tmp = target.parent / f"{target.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            build(tmp)
            tmp.rename(target)
    return target


def train_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def build_tiny_base(model: ModelConfig, out_dir: Path) -> None:
    from fedmem.data.qa import public_corpus

    # Mostly QA and note-shaped records, so the base model knows the formats and fine-tuning
    # has only the canaries' contents left to memorize (as with a real pretrained model).
    corpus = public_corpus(seed=PRETRAIN_SEED, n_qa=4000, n_icd=5000, n_records=3000)
    tokenizer = train_tokenizer(corpus, model.vocab_size)
    lm = new_tiny_llama(model, tokenizer, seed=PRETRAIN_SEED)
    if model.pretrain_steps:
        warm_start(lm, tokenizer, corpus, model.pretrain_steps, model.pretrain_lr)
    out_dir.mkdir(parents=True)
    tokenizer.save_pretrained(out_dir)
    lm.save_pretrained(out_dir)


def pack_blocks(token_lists: list[list[int]], block: int) -> torch.Tensor:
    """Concatenate documents and cut into [n_blocks, block] training rows."""
    flat = [t for ids in token_lists for t in ids]
    n = len(flat) // block
    return torch.tensor(flat[: n * block], dtype=torch.long).view(n, block)


def warm_start(lm, tokenizer, corpus: list[str], steps: int, lr: float) -> None:
    """Plain next-token pretraining: packed blocks, AdamW, cosine decay with warmup."""
    rng = random.Random(PRETRAIN_SEED)
    docs = list(corpus)
    rng.shuffle(docs)
    eos = tokenizer.eos_token_id
    blocks = pack_blocks([ids + [eos] for ids in tokenizer(docs)["input_ids"]], PRETRAIN_BLOCK)
    torch.manual_seed(PRETRAIN_SEED)
    optimizer = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    lm.train()
    order = torch.randperm(len(blocks))
    for step in range(steps):
        progress.step("tiny Llama base: warm-start steps", step, steps)
        idx = order[(step * PRETRAIN_BATCH + torch.arange(PRETRAIN_BATCH)) % len(blocks)]
        batch = blocks[idx]  # [PRETRAIN_BATCH, PRETRAIN_BLOCK] token ids
        loss = lm(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    progress.step("tiny Llama base: warm-start steps", steps, steps)
    lm.eval()
