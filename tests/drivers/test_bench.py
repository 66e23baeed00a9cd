"""`make bench` appends its table under its own heading of benchmarks/RESULTS.md."""

from __future__ import annotations

import benchmarks.speed_ratios as bench
from fedmem.files import read_jsonl


def test_a_bench_run_is_appended_to_its_section_and_other_sections_are_kept(
    tmp_path, monkeypatch
):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmarks\n\n## Extraction\n\nother helper's table\n")
    monkeypatch.setattr(bench, "RESULTS", results)
    bench.append_results("### run 1\n")
    bench.append_results("### run 2\n")
    text = results.read_text()
    assert text.startswith("# Benchmarks\n\n## Extraction\n\nother helper's table\n")
    section = text.split(bench.HEADING, 1)[1]
    assert section.index("### run 1") < section.index("### run 2")
    assert text.count(bench.HEADING) == 1


def test_the_section_comes_before_a_later_heading_of_another_helper(tmp_path, monkeypatch):
    results = tmp_path / "RESULTS.md"
    results.write_text(f"# Benchmarks\n\n{bench.HEADING}\n\n### old run\n\n## Later\n\nkept\n")
    monkeypatch.setattr(bench, "RESULTS", results)
    bench.append_results("### new run\n")
    text = results.read_text()
    assert text.index("### old run") < text.index("### new run") < text.index("## Later")
    assert text.endswith("## Later\n\nkept\n")


def test_the_table_has_one_row_per_ratio_with_its_number():
    rows = [
        ("a / b", 1.234, 1.1, "<= 1.15", "2 s vs 1 s"),
        ("c / d", 12.0, float("nan"), ">= 10", "x"),
    ]
    lines = bench.table(rows, seconds=60).splitlines()
    assert "| a / b | 1.23 | 1.10 | <= 1.15 | 2 s vs 1 s |" in lines
    assert "| c / d | 12.00 | - | >= 10 | x |" in lines
    assert "CPUs" in lines[0] and "torch" in lines[0] and "flwr" in lines[0]


TINY = [
    "model.hidden_size=64", "model.num_layers=2", "model.num_heads=2",
    "model.intermediate_size=128", "model.vocab_size=512", "model.pretrain_steps=5",
    "data.num_samples=60", "canaries.per_count=1", "canaries.exposure_per_count=0",
    "attack.membership.enabled=false", "attack.exposure.enabled=false",
]


def test_every_kind_of_step_is_timed_on_the_clients_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "EXTRA", TINY)
    for finetuning in ("lora", "full"):
        plain = bench.load([f"model.finetuning={finetuning}"], str(tmp_path))
        dp = bench.load([f"model.finetuning={finetuning}", "dp_sgd.enabled=true"], str(tmp_path))
        timings = [bench.step_time(config, kind, steps=2, warmup=1)
                   for config, kind in ((plain, "plain"), (plain, "plain-one-pass"),
                                        (dp, "dp"), (dp, "dp-one-pass"))]
        assert all(t.wall_s > 0 and t.cpu_s > 0 for t in timings)


def test_the_plain_loop_trains_and_audits_every_round(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "EXTRA", TINY)
    config = bench.load(["federation.rounds=2", "training.local_steps=1", "name=plain"],
                        str(tmp_path))
    result = bench.worker_plain(config)
    assert result["wall_s"] > 0
    rounds = [r["round"] for r in read_jsonl(config.run_dir / "metrics.jsonl")]
    assert rounds == [0, 1, 2]


def test_the_likelihood_row_measures_both_passes_on_the_same_rows(monkeypatch):
    """The likelihood worker at a tiny size: both variants score row 0 alike, and each
    reports its peak RSS growth and time."""
    small = {**bench.LIKELIHOOD_MODEL, "vocab_size": 300, "hidden_size": 16}
    monkeypatch.setattr(bench, "LIKELIHOOD_MODEL", small)
    chunked = bench.worker_likelihood("chunked", 2, 32)
    whole = bench.worker_likelihood("whole-logits", 1, 32)
    assert abs(chunked["row0_logprob"] - whole["row0_logprob"]) < 1e-4
    assert abs(chunked["row0_mean"] - whole["row0_mean"]) < 1e-4
    for r in (chunked, whole):
        assert r["growth_bytes"] >= 0 and r["wall_s"] > 0 and r["rss_method"]


def test_only_runs_the_named_rows_and_titles_them(monkeypatch, capsys, tmp_path):
    row = ("likelihood x / y", 0.5, 0.4, "<= 1", "sides")
    monkeypatch.setattr(bench, "ONLY", {"likelihood": lambda: ([row], "| variant |\n")})
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "RESULTS.md")
    assert bench.main(["--only", "likelihood"]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "Only the likelihood rows (`--only likelihood`)" in text
    assert "| likelihood x / y | 0.50 | 0.40 | <= 1 | sides |" in text
    assert "| variant |" in text


def test_the_clients_row_samples_ten_clients_of_the_same_size_on_both_sides(tmp_path):
    from fedmem.data.federated import client_sizes, federation_index
    from fedmem.models.loading import load_tokenizer

    many = bench.load(bench.clients_sides(1000), str(tmp_path))
    ten = bench.load(bench.clients_sides(10), str(tmp_path))
    assert many.sampled_clients() == ten.sampled_clients() == 10
    assert many.data.heldout_sample == ten.data.heldout_sample
    for config in (many, ten):
        index = federation_index(config, load_tokenizer)
        assert {len(part) for part in index.parts} <= {29, 30, 31}
    assert max(client_sizes(many, load_tokenizer)) < 40
