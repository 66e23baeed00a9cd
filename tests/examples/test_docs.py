"""The Python examples of docs/api.md and docs/tracking.md run as written, in order, in one
session, from a folder laid out like the repository's root."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("api.md", "tracking.md")
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: str) -> list[str]:
    return BLOCK.findall((ROOT / "docs" / page).read_text())


def _bring_your_own_model(folder: Path) -> None:
    """What the external-model example expects to find: `my-model/` (an untrained tiny
    Llama saved by transformers, with fedmem's tokenizer) and labelled `canaries.jsonl`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from fedmem.config import load_config
    from fedmem.data.canaries import generate_records
    from fedmem.models.loading import load_tokenizer

    tokenizer = load_tokenizer(load_config(ROOT / "configs" / "quickstart.toml"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    ))
    model.save_pretrained(folder / "my-model")
    tokenizer.save_pretrained(folder / "my-model")
    rows = [{"text": text, "split": split, "injected": i < 2, "copies": 4 if i < 2 else 0}
            for i, (text, split) in enumerate(generate_records(4, seed=3))]
    (folder / "canaries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_every_page_has_python_examples():
    for page in PAGES:
        blocks = python_blocks(page)
        assert blocks, page
        for block in blocks:
            compile(block, page, "exec")


@pytest.mark.slow
def test_the_examples_run_in_order(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    _bring_your_own_model(tmp_path)
    monkeypatch.chdir(tmp_path)
    session: dict = {}
    for page in PAGES:
        for i, block in enumerate(python_blocks(page)):
            exec(compile(block, f"docs/{page} example {i + 1}", "exec"), session)
    assert (tmp_path / "runs" / "api-demo" / "audits" / "beam" / "summary.json").is_file()
    assert (tmp_path / "audits" / "my-model" / "summary.json").is_file()
    assert (tmp_path / "runs" / "seeds" / "report.md").is_file()
    logged = session["logged"]
    assert len(logged) == 3 and set(logged["status"]) == {"FINISHED"}  # the sweep, 2 cells
    assert len(session["history"]) == 2  # rounds 0 and 1
