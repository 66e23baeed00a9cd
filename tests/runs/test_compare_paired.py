"""`fedmem compare A B` says whether B's exact extraction (McNemar exact) and token accuracy
(Wilcoxon signed-rank) differ from A's over the same canaries; minimal run folders."""

from __future__ import annotations

import json
from pathlib import Path

from fedmem.config import Config, to_dict
from fedmem.drivers.cli import main

N = 12


def _run(folder: Path, exact: list[bool], ids: list[str] | None = None) -> Path:
    """A finished run folder whose final global round extracts `exact` (canary by canary);
    round 0 and a client vantage point extract nothing and must be ignored."""
    folder.mkdir(parents=True)
    ids = ids or [f"c{i:04d}" for i in range(len(exact))]
    (folder / "config.json").write_text(json.dumps(to_dict(Config())))
    summary = {"rounds": 2, "trainable_parameters": 1, "wall_time_s": 1.0,
               "final": {"round": 2, "extraction": {"decoding": "greedy", "prefix_tokens": 8}}}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "canaries.jsonl").write_text("".join(
        json.dumps({"canary_id": c, "text": f"secret {c}", "injected": True}) + "\n"
        for c in ids))
    rows = []
    for rnd, vantage, outcome in ((0, "global", [False] * len(ids)), (2, "client-0", exact),
                                  (2, "global", exact)):
        for c, hit in zip(ids, outcome if vantage == "global" else [True] * len(ids),
                          strict=True):
            rows.append({"round": rnd, "vantage": vantage, "decoding": "greedy",
                         "prefix_tokens": 8, "canary_id": c, "replicas": 4, "exact": hit,
                         "token_accuracy": 1.0 if hit else 0.25})
    rows.append({**rows[-1], "decoding": "beam", "exact": not rows[-1]["exact"]})  # not headline
    (folder / "extraction.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_every_canary_lost_is_a_significant_drop(tmp_path, capsys):
    a = _run(tmp_path / "a", [True] * N)
    b = _run(tmp_path / "b", [False] * N)
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert ("exact extraction: significant at 0.05: B < A, p < 0.001 "
            f"(McNemar exact, {N} discordant of {N})") in out
    assert "token accuracy: significant at 0.05: B < A" in out


def test_two_canaries_apart_is_not_significant(tmp_path, capsys):
    a = _run(tmp_path / "a", [True] * 6 + [False] * 6)
    b = _run(tmp_path / "b", [True] * 8 + [False] * 4)
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert ("exact extraction: not significant at 0.05: B > A, p = 0.500 "
            f"(McNemar exact, 2 discordant of {N})") in out
    assert "token accuracy: not significant at 0.05" in out


def test_runs_over_different_canaries_are_refused_in_one_line(tmp_path, capsys):
    a = _run(tmp_path / "a", [True] * N)
    b = _run(tmp_path / "b", [True] * N, ids=[f"x{i}" for i in range(N)])
    assert main(["compare", str(a), str(b)]) == 2
    captured = capsys.readouterr()
    assert "audited different canaries" in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and "B - A" not in captured.out
