"""benchmarks/gpu.sh's logic (benchmarks/gpu_run.py) end to end in its tiny CPU mode."""

from __future__ import annotations

import pytest

import benchmarks.gpu_run as gpu


@pytest.mark.slow
def test_the_tiny_cpu_mode_produces_every_row_and_leaves_results_md_alone(tmp_path, capsys):
    before = gpu.RESULTS.read_text()
    results = tmp_path / "RESULTS.md"
    assert gpu.main(["--tiny", "--device", "cpu", "--results", str(results)]) == 0
    assert gpu.RESULTS.read_text() == before
    text = results.read_text()
    assert gpu.HEADING in text and "when a GPU session runs it" in text
    rows = [line for line in text.splitlines() if line.startswith("| tiny random Llama")]
    assert len(rows) == 3, text
    llama = rows[0].split(" | ")
    fedmem_tps, plain_tps, ratio, peak = llama[1:5]
    assert float(fedmem_tps.replace(",", "")) > 0 and float(plain_tps.replace(",", "")) > 0
    assert float(ratio) == pytest.approx(
        float(fedmem_tps.replace(",", "")) / float(plain_tps.replace(",", "")), rel=0.01, abs=0.01
    )
    assert peak == "n/a (cpu)"
    for row in rows[1:]:  # full and LoRA on the smollm2-audit preset
        cells = row.split(" | ")
        assert float(cells[1].replace(",", "")) > 0 and cells[4] == "n/a (cpu)"
    assert "failed" not in text
    assert "| tiny random Llama" in capsys.readouterr().out


def test_counted_rounds_skip_the_first_round_only_when_there_are_more():
    assert gpu.counted_rounds({"1": 5.0, "2": 1.0, "3": 1.0}) == ["2", "3"]
    assert gpu.counted_rounds({"1": 5.0}) == ["1"]
    result = {"fit_s": {"1": 9.0, "2": 2.0}, "tokens": {"1": 100, "2": 100}}
    assert gpu.tokens_per_second(result) == 50.0


def test_peak_memory_is_per_client_on_cuda_and_not_applicable_on_cpu():
    result = {"peak_mib": {"1": 2048.0, "0": 1024.0}}
    assert gpu.peak_text(result, "cpu") == "n/a (cpu)"
    assert gpu.peak_text(result, "cuda") == "c0 1.0 GiB, c1 2.0 GiB"


def test_the_evidence_rows_note_the_top_replica_group_the_twins_and_perplexity():
    fl = {
        "exposure_mean": None,
        "heldout_perplexity": 12.345,
        "exact_by_replicas": {
            "0": {"exact_rate": 0.0, "exact_rate_ci": [0.0, 0.109], "n": 32},
            "1": {"exact_rate": 0.0, "exact_rate_ci": [0.0, 0.206], "n": 16},
            "8": {"exact_rate": 0.5, "exact_rate_ci": [0.247, 0.753], "n": 16},
        },
    }
    text = gpu.final_audit_text(fl)
    assert "exact extraction 8x 50.0 % [24.7, 75.3] (n 16)" in text
    assert "twins 0.0 % [0.0, 10.9]" in text and "held-out perplexity 12.35" in text
    # A run without extraction by replicas (older presets) falls back to exposure.
    fallback = gpu.final_audit_text({"exposure_mean": 5.5})
    assert fallback == "final exposure (mean, injected) 5.50 bits"


def test_part_a_runs_the_evidence_presets_full_and_lora():
    from fedmem.config import load_config

    kinds = {k: load_config(p).model.finetuning for k, p in gpu.SMOLLM2_EVIDENCE.items()}
    assert kinds == {"full": "full", "lora": "lora"}
