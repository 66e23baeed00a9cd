"""Shared fixtures: tiny sizes everywhere, and a cache folder private to the test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Built artefacts (tokenizer, warm-started base) go to a cache inside the checkout, shared by
# the test session's processes (Ray workers included) and ignored by git.
os.environ.setdefault(
    "FEDMEM_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "fedmem-tests")
)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

TINY_OVERRIDES = {
    "model": {
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 512,
        "pretrain_steps": 20,
    },
    "data": {"num_samples": 120},
    "canaries": {"replica_counts": [1, 4], "per_count": 2, "exposure_digits": 2},
    "federation": {"num_clients": 2, "rounds": 2},
    "training": {"batch_size": 8, "lr": 3e-3, "max_seq_len": 128},
    "attack": {"prefix_tokens": 16, "suffix_tokens": 16},
    "dp_audit": {"records": 40, "client_canaries": 8},  # DP runs: a small audit
}


@pytest.fixture
def tiny_raw(tmp_path) -> dict:
    """A nested config mapping for a tiny, fast run writing under tmp_path."""
    import copy

    raw = copy.deepcopy(TINY_OVERRIDES)
    raw["name"] = "tiny"
    raw["output"] = {"dir": str(tmp_path / "runs")}
    return raw
