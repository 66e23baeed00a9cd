"""Reports: report.md, a self-contained report.html and PNG figures, numbers from the store."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from fedmem.cli import main
from fedmem.report_files import write_report
from fedmem.store import query

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALWAYS = ("extraction_vs_round", "extraction_vs_replicas", "privacy_utility")


@pytest.fixture(scope="module")
def sweep_report(finished_sweep):
    return write_report(finished_sweep.sweep.folder)


def _markdown_table(text: str, heading: str) -> list[dict[str, str]]:
    block = text.split(heading, 1)[1].strip().split("\n\n", 1)[0].splitlines()
    header = [c.strip() for c in block[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
            for line in block[2:]]


def _mean_std(cell: str) -> tuple[float, float]:
    mean, _, std = cell.partition(" ± ")
    return float(mean), float(std or 0)


def test_each_figure_is_a_non_empty_png_next_to_the_report(sweep_report, finished_sweep):
    assert set(sweep_report.figures) == set(ALWAYS)
    for name in ALWAYS:
        png = finished_sweep.sweep.folder / f"{name}.png"
        assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 5000
        assert f"]({name}.png)" in sweep_report.markdown.read_text()


def test_html_embeds_its_figures_and_loads_nothing_external(sweep_report):
    page = sweep_report.html.read_text()
    assert page.count('src="data:image/png;base64,') == len(ALWAYS)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<link" not in page and "<script" not in page


def test_report_table_numbers_equal_the_store(sweep_report, finished_sweep):
    rows = _markdown_table(sweep_report.markdown.read_text(),
                           "## Memorization and utility by combination")
    runs = query(finished_sweep.sweep.folder, "runs")
    numbers = ["seed", "exact_rate", "token_accuracy", "longest_match", "heldout_perplexity"]
    stats = runs.groupby("combination")[numbers].agg(["mean", "std", "count"])
    assert sorted(r["combination"] for r in rows) == sorted(stats.index)
    for row in rows:
        s = stats.loc[row["combination"]]
        assert int(row["seeds"]) == s[("seed", "count")] == 2
        for column, key, scale, tol in (
            ("exact (%)", "exact_rate", 100, 0.05),
            ("partial: token acc (%)", "token_accuracy", 100, 0.05),
            ("longest run (tokens)", "longest_match", 1, 0.05),
            ("held-out ppl", "heldout_perplexity", 1, 0.005),
        ):
            mean, std = _mean_std(row[column])
            assert mean == pytest.approx(s[(key, "mean")] * scale, abs=tol), column
            assert std == pytest.approx(s[(key, "std")] * scale, abs=tol), column


def test_replica_table_equals_the_final_round_metrics(sweep_report, finished_sweep):
    rows = _markdown_table(sweep_report.markdown.read_text(),
                           "## Exact extraction by replica count (%)")
    final = query(
        finished_sweep.sweep.folder,
        "SELECT r.combination, AVG(m.value) * 100 AS pct FROM round_metrics m "
        "JOIN runs r USING (run_id) WHERE m.round = r.rounds "
        "AND m.key = 'extraction.by_replicas.4.exact_rate' GROUP BY r.combination",
    ).set_index("combination")["pct"]
    for row in rows:
        assert float(row["4x"]) == pytest.approx(final[row["combination"]], abs=0.05)


def test_report_names_the_audits_these_runs_lack(sweep_report):
    text = sweep_report.markdown.read_text()
    absent = text.split("## Not in these runs", 1)[1]
    for what in ("MIA AUC", "MIA ROC curves", "exposure", "QA accuracy"):
        assert f"- {what}" in absent


def test_audit_fields_light_up_when_runs_carry_them(finished_sweep, tmp_path):
    """Runs carrying MIA AUC, ROC points and exposure (as an audit would write them) get the
    ROC and exposure figures and an AUC column; nothing is listed as absent but QA accuracy."""
    for cell in (finished_sweep.sweep.cells[0], finished_sweep.sweep.cells[4]):
        run = shutil.copytree(cell.run_dir, tmp_path / "runs" / cell.name,
                              ignore=shutil.ignore_patterns("checkpoint"))
        rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
        for row in rows:
            row["mia"] = {"loss": {"auc": 0.5 + 0.1 * row["round"]}}
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (run / "mia-round-001.json").write_text(json.dumps(
            {"round": 1, "loss": {"fpr": [0, 0.2, 1], "tpr": [0, 0.6, 1]}}))
        (run / "exposure.jsonl").write_text("".join(
            json.dumps({"round": 1, "canary_id": f"c{i:04d}", "replicas": i % 2 * 4,
                        "exposure": float(i)}) + "\n" for i in range(6)))
    report = write_report(tmp_path / "runs")
    assert set(report.figures) == {*ALWAYS, "mia_roc", "exposure"}
    assert all(p.stat().st_size > 5000 for p in report.figures.values())
    assert "MIA AUC (best score)" in report.table[0] and "exposure (bits)" in report.table[0]
    assert [a.split(" (")[0] for a in report.absent] == ["QA accuracy"]
    auc = report.table[0].index("MIA AUC (best score)")
    assert {row[auc] for row in report.table[1:]} == {"0.600"}


def test_cli_report_of_a_single_run_writes_into_its_folder(finished_sweep, capsys):
    run = finished_sweep.sweep.cells[0].run_dir
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").exists() and (run / "privacy_utility.png").exists()
    assert "exact (%)" in capsys.readouterr().out


def test_compare_prints_two_runs_side_by_side(finished_sweep, capsys):
    a, b = (finished_sweep.sweep.cells[i].run_dir for i in (0, 4))
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "B - A" in out and "heldout_perplexity" in out
    assert re.search(r"config model\.finetuning\s*│\s*full\s*│\s*lora", out)


def test_compare_of_a_folder_that_is_no_run_exits_2(tmp_path, capsys):
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 2
    assert "not a finished run folder" in capsys.readouterr().err
