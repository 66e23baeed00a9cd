"""`fedmem audit --model PATH`: audit a causal LM trained outside fedmem (plain transformers
and torch here), full or as a peft adapter, from a labelled canary file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedmem.config import load_config
from fedmem.data.canaries import generate_records
from fedmem.drivers.cli import main
from fedmem.files import read_jsonl
from fedmem.models.loading import load_tokenizer

INJECTED, TWINS, COPIES = 4, 4, 8


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(load_config("configs/quickstart.toml"))


@pytest.fixture(scope="module")
def records() -> list[tuple[str, int]]:
    return generate_records(INJECTED + TWINS, seed=11)


def _tiny_llama(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(shape)


def _train(model, tokenizer, texts: list[str], steps: int, lr: float) -> None:
    """Plain torch: the injected texts, `COPIES` times each per batch, never the twins."""
    batch = tokenizer([t + tokenizer.eos_token for t in texts] * COPIES, return_tensors="pt",
                      padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _write_canaries(path: Path, records: list[tuple[str, int]]) -> Path:
    rows = [
        {"text": text, "split": split, "injected": i < INJECTED,
         "copies": COPIES if i < INJECTED else 0}
        for i, (text, split) in enumerate(records)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _save(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _check_audit(out: Path) -> dict:
    for name in ("summary.json", "metrics.jsonl", "extraction.jsonl", "membership.jsonl",
                 "canaries.jsonl", "config.json"):
        assert (out / name).is_file(), name
    rows = read_jsonl(out / "extraction.jsonl")
    by_copies: dict[bool, list[float]] = {True: [], False: []}
    canaries = {r["canary_id"]: r for r in read_jsonl(out / "canaries.jsonl")}
    for row in rows:
        by_copies[canaries[row["canary_id"]]["injected"]].append(row["token_accuracy"])
    injected, twins = (sum(v) / len(v) for v in (by_copies[True], by_copies[False]))
    assert injected > twins + 0.2
    gap = json.loads((out / "summary.json").read_text())["final"]["canary_loss_gap"]
    return gap


def test_a_full_model_trained_outside_fedmem_is_audited(tmp_path, tokenizer, records, capsys):
    model = _tiny_llama(tokenizer)
    _train(model, tokenizer, [t for t, _ in records[:INJECTED]], steps=40, lr=3e-3)
    folder = _save(model, tokenizer, tmp_path / "hospital-model")
    canaries = _write_canaries(tmp_path / "canaries.jsonl", records)
    members = tmp_path / "members.jsonl"
    members.write_text(json.dumps({"text": records[0][0]}) + "\n")
    nonmembers = tmp_path / "nonmembers.jsonl"
    nonmembers.write_text(json.dumps({"text": records[-1][0]}) + "\n")
    out = tmp_path / "audit"

    code = main(["audit", "--model", str(folder), "--canaries", str(canaries),
                 "--members", str(members), "--nonmembers", str(nonmembers), "--out", str(out)])

    assert code == 0
    gap = _check_audit(out)
    assert gap["injected_loss"] < gap["twin_loss"]
    said = capsys.readouterr().out
    assert "reference and rmia skipped" in said and "exposure: skipped" in said
    samples = read_jsonl(out / "membership.jsonl")
    assert {s["kind"] for s in samples} == {"canary", "qa"}
    assert "rmia" not in samples[0]["scores"] and "loss" in samples[0]["scores"]
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").is_file() and (out / "report.html").is_file()

    bad = tmp_path / "bad.jsonl"
    bad.write_text(canaries.read_text() + '{"text": "x y z", "injected": true, "copies": 0}\n')
    assert main(["audit", "--model", str(folder), "--canaries", str(bad),
                 "--out", str(tmp_path / "bad-audit")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:{INJECTED + TWINS + 1}:" in err


def test_a_peft_adapter_is_audited_on_its_base(tmp_path, tokenizer, records):
    from peft import LoraConfig, get_peft_model

    base = _save(_tiny_llama(tokenizer), tokenizer, tmp_path / "base")
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                        "gate_proj", "up_proj", "down_proj"]),
    )
    _train(model, tokenizer, [t for t, _ in records[:INJECTED]], steps=60, lr=1e-2)
    model.save_pretrained(tmp_path / "adapter")
    canaries = _write_canaries(tmp_path / "canaries.jsonl", records)
    out = tmp_path / "audit"

    code = main(["audit", "--model", str(tmp_path / "adapter"), "--base", str(base),
                 "--canaries", str(canaries), "--out", str(out)])

    assert code == 0
    _check_audit(out)
    samples = read_jsonl(out / "membership.jsonl")
    assert {"reference", "rmia"} <= set(samples[0]["scores"])
