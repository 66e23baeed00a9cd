"""`make bench` appends its table under its own heading of benchmarks/RESULTS.md."""

from __future__ import annotations

import benchmarks.speed_ratios as bench


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
