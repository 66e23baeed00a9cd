"""Reports: report.md, a self-contained report.html and PNG figures, numbers from the store."""

from __future__ import annotations

import copy
import json
import re
import statistics

import pytest

from fedmem.drivers.cli import main
from fedmem.runs.report_files import ReportData, _table_rows, write_report
from fedmem.runs.store import query
from tests.support.configs import TINY_OVERRIDES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALWAYS = ("extraction_vs_round", "extraction_vs_replicas", "privacy_utility")
AUDITED = (*ALWAYS, "mia_roc", "exposure")  # runs that audit membership and exposure (default)


@pytest.fixture(scope="module")
def unaudited_run(tmp_path_factory):
    """A tiny finished run that audited neither membership inference nor exposure."""
    from fedmem.config import build_config
    from fedmem.drivers.api import train_and_audit

    folder = tmp_path_factory.mktemp("unaudited")
    raw = copy.deepcopy(TINY_OVERRIDES)
    raw.update(name="unaudited", mode="centralized", output={"dir": str(folder)})
    raw["federation"] = {**raw["federation"], "rounds": 1}
    raw["attack"] = {**raw["attack"], "membership": {"enabled": False},
                     "exposure": {"enabled": False}}
    train_and_audit(build_config(raw))
    return folder / "unaudited"


def _final_rows(finished_sweep) -> dict[str, list[dict]]:
    """combination -> the final metrics row of each of its seeds' runs (summary.json)."""
    rows: dict[str, list[dict]] = {}
    for cell in finished_sweep.sweep.cells:
        summary = json.loads((cell.run_dir / "summary.json").read_text())
        rows.setdefault(cell.combination, []).append(summary["final"])
    return rows


def _markdown_table(text: str, heading: str) -> list[dict[str, str]]:
    block = text.split(heading, 1)[1].strip().split("\n\n", 1)[0].splitlines()
    header = [c.strip() for c in block[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
            for line in block[2:]]


def _mean_ci(cell: str) -> tuple[float, float, float]:
    """'12.5 [3.1, 21.9]' -> (12.5, 3.1, 21.9): the mean and its t-interval over seeds."""
    mean, _, ci = cell.partition(" [")
    low, high = ci.rstrip("]").split(", ")
    return float(mean), float(low), float(high)


INF = float("inf")


def _t_interval(values: list[float], bounds: tuple[float, float]) -> tuple[float, float]:
    """The 95 % t-interval over seeds, cut to the value's range (a rate in [0, 100] %)."""
    from attacks.statistics import aggregate_seeds

    ci = aggregate_seeds(values)
    return max(ci.low, bounds[0]), min(ci.high, bounds[1])


def test_each_figure_is_a_non_empty_png_next_to_the_report(sweep_report, finished_sweep):
    assert set(sweep_report.figures) == set(AUDITED)
    for name in AUDITED:
        png = finished_sweep.sweep.folder / f"{name}.png"
        assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 5000
        assert f"]({name}.png)" in sweep_report.markdown.read_text()


def test_html_embeds_its_figures_and_loads_nothing_external(sweep_report):
    page = sweep_report.html.read_text()
    assert page.count('src="data:image/png;base64,') == len(AUDITED)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<link" not in page and "<script" not in page


def test_report_table_numbers_equal_the_store(sweep_report, finished_sweep):
    rows = _markdown_table(sweep_report.markdown.read_text(),
                           "## Memorization and utility by combination")
    runs = query(finished_sweep.sweep.folder, "runs")
    numbers = ["seed", "exact_rate", "token_accuracy", "longest_match", "heldout_perplexity",
               "approx_char_rate"]
    stats = runs.groupby("combination")[numbers].agg(["mean", "count", list])
    assert sorted(r["combination"] for r in rows) == sorted(stats.index)
    for row in rows:
        s = stats.loc[row["combination"]]
        assert int(row["seeds"]) == s[("seed", "count")] == 2
        for column, key, scale, tol, bounds in (
            ("exact (%)", "exact_rate", 100, 0.05, (0, 100)),
            ("partial: token acc (%)", "token_accuracy", 100, 0.05, (0, 100)),
            ("longest run (tokens)", "longest_match", 1, 0.05, (0, INF)),
            ("held-out ppl", "heldout_perplexity", 1, 0.005, (1, INF)),
            ("approx (BLEU>0.75) (%)", "approx_char_rate", 100, 0.05, (0, 100)),
        ):
            mean, low, high = _mean_ci(row[column])
            assert mean == pytest.approx(s[(key, "mean")] * scale, abs=tol), column
            expected = _t_interval([v * scale for v in s[(key, "list")]], bounds)
            assert (low, high) == pytest.approx(expected, abs=tol), column


@pytest.mark.parametrize(("heading", "rate"), [
    ("## Exact extraction by replica count (%, mean [95 % interval])", "exact_rate"),
    ("## Approximate memorization (character BLEU above attack.bleu_threshold) by replica "
     "count (%, mean [95 % interval])", "approx_char_rate"),
])
def test_replica_table_equals_the_final_round_metrics(sweep_report, finished_sweep, heading,
                                                      rate):
    rows = _markdown_table(sweep_report.markdown.read_text(), heading)
    final = query(
        finished_sweep.sweep.folder,
        "SELECT r.combination, AVG(m.value) * 100 AS pct FROM round_metrics m "
        "JOIN runs r USING (run_id) WHERE m.round = r.rounds "
        f"AND m.key = 'extraction.by_replicas.4.{rate}' GROUP BY r.combination",
    ).set_index("combination")["pct"]
    assert sorted(r["combination"] for r in rows) == sorted(final.index)
    for row in rows:
        assert _mean_ci(row["4x"])[0] == pytest.approx(final[row["combination"]], abs=0.05)


def test_report_names_the_audits_these_runs_lack(unaudited_run):
    report = write_report(unaudited_run)
    assert set(report.figures) == set(ALWAYS)
    absent = report.markdown.read_text().split("## Not in these runs", 1)[1]
    for what in ("MIA AUC", "MIA ROC curves", "exposure"):
        assert f"- {what} (" in absent
    assert [a.split(" (")[0] for a in report.absent] == ["MIA AUC", "MIA ROC curves", "exposure"]
    assert not any(h.startswith(("MIA", "exposure")) for h in report.table[0])
    assert {"QA accuracy (%)", "MCQ accuracy (%)"} <= set(report.table[0])  # utility: always
    run = query(unaudited_run, "runs").iloc[0]
    assert run[["mia_score", "mia_auc", "exposure_mean"]].isna().all()
    assert query(unaudited_run, "mia_roc").empty and query(unaudited_run, "exposure").empty


def test_audited_runs_lack_nothing(sweep_report):
    assert sweep_report.absent == []
    assert "## Not in these runs" not in sweep_report.markdown.read_text()


def test_audit_columns_equal_the_final_round_audits(sweep_report, finished_sweep):
    """MIA AUC and TPR of the headline score (reference: computed by default), exposure of the
    injected exposure canaries and held-out QA / MCQ accuracy: mean [95 % t-interval] over
    seeds of each run's final metrics row."""
    header = sweep_report.table[0]
    columns = {
        "MIA AUC (reference)": (lambda r: r["membership"]["scores"]["reference"]["all"]["auc"],
                                1, 0.0005, (0, 1)),
        "exposure (bits)": (lambda r: r["exposure"]["injected"]["mean"], 1, 0.005, (0, INF)),
        "QA accuracy (%)": (lambda r: r["utility"]["qa_accuracy"], 100, 0.05, (0, 100)),
        "MCQ accuracy (%)": (lambda r: r["utility"]["mcq_accuracy"], 100, 0.05, (0, 100)),
    }
    assert set(columns) <= set(header)
    finals = _final_rows(finished_sweep)
    for row in sweep_report.table[1:]:
        runs = finals[row[0]]
        assert len(runs) == 2
        for column, (field, scale, tol, bounds) in columns.items():
            values = [field(r) * scale for r in runs]
            mean, low, high = _mean_ci(row[header.index(column)])
            assert mean == pytest.approx(statistics.mean(values), abs=tol), column
            assert (low, high) == pytest.approx(_t_interval(values, bounds), abs=tol), column
        tprs = [r["membership"]["scores"]["reference"]["all"]["tpr_at_fpr_0.01"] for r in runs]
        cell = row[header.index("MIA TPR @ 1% FPR (%)")]
        if None in tprs:  # too few non-members: every seed's run has the same count
            assert cell == "n/a (needs ≥ 100 non-members)"
        else:
            mean = _mean_ci(cell)[0]
            assert mean == pytest.approx(100 * statistics.mean(tprs), abs=0.05)


def test_roc_and_exposure_figures_draw_the_global_final_round(sweep_report, finished_sweep):
    """The figures' data: the final round's global curves over all samples (one panel per
    configured score) and the final round's global exposure rows, for every combination."""
    from fedmem.runs.report_files import _final_round_rows, load_report_data

    db = finished_sweep.sweep.folder / "fedmem.sqlite"
    data = load_report_data(db, [c.name for c in finished_sweep.sweep.cells])
    cell = finished_sweep.sweep.cells[0]
    curves = json.loads((cell.run_dir / "roc" / "round-001.json").read_text())["global"]
    roc = _final_round_rows(data.roc[data.roc.population == "all"])
    mine = roc[roc.run_id == cell.name].sort_values(["curve", "point"])
    for score, points in curves.items():
        got = mine[mine.curve == score]
        assert got["fpr"].tolist() == points["all"]["fpr"]
        assert got["tpr"].tolist() == points["all"]["tpr"]
    exposure = _final_round_rows(data.exposure)
    assert set(exposure["round"]) == {1}
    assert set(exposure["combination"]) == set(data.style.index)
    for name in ("mia_roc", "exposure"):
        assert sweep_report.figures[name].stat().st_size > 5000


def test_the_report_opens_on_its_verdict_per_combination(sweep_report, finished_sweep):
    """Before the big table: per combination, its mitigations (the registry's labels), then
    extraction against the twins, MIA AUC and the perplexity cost, each with an interval."""
    text = sweep_report.markdown.read_text()
    assert text.index("## Verdict") < text.index("## Memorization and utility by combination")
    verdict = text.split("## Verdict", 1)[1].split("## Memorization", 1)[0]
    runs = query(finished_sweep.sweep.folder, "runs")
    labels = runs.groupby("combination")["mitigations"].first()
    assert [v.combination for v in sweep_report.verdicts] == [
        r[0] for r in sweep_report.table[1:]]
    for combination, label in labels.items():
        assert f"**{combination}: mitigations {label} (2 seeds, pooled)**" in verdict
    for found in sweep_report.verdicts:
        extraction, mia, utility = found.lines
        assert "(global model)" in extraction and "twins " in extraction
        assert re.search(r"\d+/\d+, [\d.]+ % \[[\d.]+, [\d.]+\]", extraction)
        assert mia.startswith("membership inference (reference, global model): AUC ")
        assert utility.startswith("utility: held-out perplexity ") and " -> " in utility
    assert "safe" not in verdict.lower().replace("not as safety", "")


def test_roc_curves_are_log_log_from_one_over_the_samples(finished_sweep):
    """As the field reads them: log axes starting at 1/n (the smallest rate n samples
    resolve), the chance diagonal, and each line's n in the legend."""
    from fedmem.audits.membership import draw_roc, final_curves
    from fedmem.runs.report_files import load_report_data

    db = finished_sweep.sweep.folder / "fedmem.sqlite"
    data = load_report_data(db, [c.name for c in finished_sweep.sweep.cells])
    nonmembers, members = (int(data.runs[c].iloc[0]) for c in ("mia_nonmembers", "mia_members"))
    fig = draw_roc(final_curves(data), data)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == final_curves(data)["curve"].nunique()
    for ax in panels:
        assert ax.get_xscale() == ax.get_yscale() == "log"
        assert ax.get_xlim()[0] == pytest.approx(1 / nonmembers)
        assert ax.get_ylim()[0] == pytest.approx(1 / members)
        assert any(line.get_label() == "chance" for line in ax.get_lines())
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert f"{data.runs.combination.iloc[0]} (n = {members}/{nonmembers})" in legend


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


def _data(runs: list[dict]):
    import pandas as pd

    frame = pd.DataFrame(runs)
    style = frame.groupby("combination")["finetuning"].first().to_frame()
    return ReportData(frame, pd.DataFrame(), pd.DataFrame(), style)


def test_the_report_shows_a_tpr_its_non_members_cannot_resolve_as_what_it_needs():
    """62 non-members cannot resolve 1 % FPR (it takes 100): the cell says so, where a
    number would be the TPR at FPR 0 under a 1 % label."""
    run = {"finetuning": "lora", "wall_time_s": 1.0, "mia_tpr_at_1pct_fpr": None}
    rows = _table_rows(_data([
        {**run, "run_id": "a-0", "combination": "a", "seed": 0, "mia_nonmembers": 62},
        {**run, "run_id": "b-0", "combination": "b", "seed": 0, "mia_nonmembers": 400,
         "mia_tpr_at_1pct_fpr": 0.125},
    ]))
    column = rows[0].index("MIA TPR @ 1% FPR (%)")
    assert {r[0]: r[column] for r in rows[1:]} == {
        "a": "n/a (needs ≥ 100 non-members)", "b": "12.5"}


def test_the_report_table_shows_approximate_memorization_with_its_threshold():
    run = {"finetuning": "full", "wall_time_s": 1.0, "bleu_threshold": 0.75}
    rows = _table_rows(_data([
        {**run, "run_id": "a-0", "combination": "a", "seed": 0, "approx_char_rate": 0.5},
        {**run, "run_id": "a-1", "combination": "a", "seed": 1, "approx_char_rate": 0.25},
        {**run, "run_id": "b-0", "combination": "b", "seed": 0, "approx_char_rate": 0.0},
    ]))
    column = rows[0].index("approx (BLEU>0.75) (%)")
    cells = {r[0]: r[column] for r in rows[1:]}
    assert _mean_ci(cells["a"])[0] == pytest.approx(37.5)
    assert cells["b"].startswith("0.0")


def test_full_and_lora_cells_are_compared_canary_by_canary(sweep_report, finished_sweep):
    """Each goldfish setting has a full and a LoRA cell per seed: one line per pair, McNemar
    exact on exact matches and Wilcoxon on token accuracy over (seed, canary) pairs."""
    rows = _markdown_table(sweep_report.markdown.read_text(),
                           "## Full vs LoRA fine-tuning: paired tests over the same canaries")
    assert len(rows) == 2
    injected = query(finished_sweep.sweep.folder,
                     "SELECT COUNT(DISTINCT canary_id) AS n FROM canary_results "
                     "WHERE injected = 1").iloc[0]["n"]
    for row in rows:
        assert row["full"].startswith("model.finetuning=full") or "full" in row["full"]
        assert int(row["pairs"]) == 2 * injected  # two seeds
        assert re.search(r"LoRA [<>=] full, p [=<] [\d.]+ \(McNemar exact, \d+ discordant of "
                         rf"{2 * injected}\)", row["exact extraction"])
        assert "Wilcoxon signed-rank" in row["token accuracy"]


def test_a_one_seed_combination_shows_its_runs_own_interval():
    """One seed has no interval over seeds; the cell shows the run's own (here exact
    extraction's Clopper-Pearson and the AUC's bootstrap), while two seeds keep the
    t-interval over seeds and a column with no interval of its own stays bare."""
    run = {"finetuning": "full", "wall_time_s": 1.0, "longest_match": 3.0}
    rows = _table_rows(_data([
        {**run, "run_id": "a-0", "combination": "a", "seed": 0, "exact_rate": 0.625,
         "exact_rate_low": 0.245, "exact_rate_high": 0.915, "mia_auc": 0.9,
         "mia_auc_low": 0.8, "mia_auc_high": 0.97, "mia_score": "loss"},
        {**run, "run_id": "b-0", "combination": "b", "seed": 0, "exact_rate": 0.5,
         "exact_rate_low": 0.1, "exact_rate_high": 0.9, "mia_auc": 0.6,
         "mia_auc_low": 0.5, "mia_auc_high": 0.7, "mia_score": "loss"},
        {**run, "run_id": "b-1", "combination": "b", "seed": 1, "exact_rate": 0.25,
         "exact_rate_low": 0.0, "exact_rate_high": 0.6, "mia_auc": 0.7,
         "mia_auc_low": 0.6, "mia_auc_high": 0.8, "mia_score": "loss"},
    ]))
    header = rows[0]
    cells = {r[0]: dict(zip(header, r, strict=True)) for r in rows[1:]}
    assert cells["a"]["exact (%)"] == "62.5 [24.5, 91.5]"
    assert _mean_ci(cells["a"]["MIA AUC (loss)"]) == pytest.approx((0.9, 0.8, 0.97))
    assert cells["a"]["longest run (tokens)"] == "3.0"  # no interval recorded: none shown
    mean, low, high = _mean_ci(cells["b"]["exact (%)"])
    assert mean == pytest.approx(37.5)
    assert (low, high) == pytest.approx(_t_interval([50.0, 25.0], (0, 100)), abs=0.05)
