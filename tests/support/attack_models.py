"""Small models and tokenizers shared by the attack specifications (no config, no cache)."""

from __future__ import annotations

import random
from functools import lru_cache

import torch

from fedmem.config import ModelConfig
from fedmem.models.tiny_llama import new_tiny_llama, train_tokenizer

TINY_SHAPE = ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
CORPUS = [
    "Medical Note: MRN 4829-1734\nPatient: Jane Roe, 12 Elm Street, Springfield.\n"
    "DOB 1967-03-12. SSN 123-45-6789. Diagnosis: asthma (J45.909).",
    "Pharmacy refill PIN for Jane Roe, MRN 4829-1734: 0123456789 " * 5,
    "Patient notes and diagnoses, codes and numbers 0 1 2 3 4 5 6 7 8 9. " * 20,
]


@lru_cache(maxsize=1)
def tokenizer():
    """Trained once per test session and only read afterwards."""
    return train_tokenizer(CORPUS, vocab_size=300)


def short_texts(n: int, seed: int) -> list[str]:
    """`n` distinct short texts drawn from the corpus' words (about 25 tokens each)."""
    words = sorted({w for text in CORPUS for w in text.split()})
    rng = random.Random(seed)
    # A dict keeps first-drawn order: a set's order follows the process' string hash seed,
    # which made the texts (and the tests' verdicts) differ between processes.
    texts: dict[str, None] = {}
    while len(texts) < n:
        texts[" ".join(rng.choice(words) for _ in range(8))] = None
    return sorted(texts, key=lambda _: rng.random())


def tiny_model(tok, seed: int = 0):
    return new_tiny_llama(TINY_SHAPE, tok, seed=seed).eval()


def memorize(model, rows: list[list[int]], steps: int, lr: float = 3e-3) -> None:
    """Train `model` on `rows` (each a whole row, batched together) until it recites them."""
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
