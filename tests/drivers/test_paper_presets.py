"""configs/paper/: the reference study's setting at full scale (docs/study.md), valid config."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmem.config import load_config

PAPER = sorted((Path(__file__).resolve().parents[2] / "configs" / "paper").glob("*.toml"))


def test_there_is_a_lora_and_a_full_preset_per_model():
    stems = {p.stem for p in PAPER}
    for model in ("llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b"):
        assert {f"{model}-lora", f"{model}-full"} <= stems


@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_preset_validates_with_the_study_settings(path):
    config = load_config(path)
    assert config.model.name.startswith("meta-llama/Llama-3")
    assert config.model.finetuning == path.stem.rsplit("-", 1)[1]
    assert (config.lora.rank, config.lora.alpha, config.lora.dropout) == (16, 8.0, 0.05)
    assert (config.federation.num_clients, config.federation.rounds) == (3, 5)
    assert config.training.local_epochs == 1 and config.training.max_seq_len == 1024
    sizes = dict(config.canaries.group_sizes())
    assert sizes.keys() == {1, 10}
    assert sizes[10] / sum(sizes.values()) == pytest.approx(0.3)
    assert sizes[1] / sum(sizes.values()) == pytest.approx(0.7)
    assert config.attack.suffix_tokens == 50
    assert sorted(config.attack.prefix_lengths()) == [10, 50, 100, 200, 500]


@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_preset_canaries_are_long_notes_split_after_the_longest_prefix(path):
    c = load_config(path).canaries
    assert c.kind == "note"
    assert c.note_split_tokens >= 500  # the study's longest prefix ends at the split
    assert c.note_min_tokens - c.note_split_tokens >= 50  # the scored 50 tokens follow it


@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_preset_gives_each_client_one_study_dataset_and_canaries_by_data_size(path):
    config = load_config(path)
    assert (config.data.source, config.data.partition) == ("datasets", "by-source")
    assert config.data.datasets == ("flashcards", "medmcqa", "pubmedqa")
    assert config.data.flashcards.size == 10_000
    assert config.canaries.placement == "proportional"
