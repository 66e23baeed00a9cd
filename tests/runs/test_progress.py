"""Progress on long work: steps reported where the work happens (fedmem.progress) reach the
bar the driver shows, with the time left on a terminal; off a terminal, one line per round."""

import io
from types import SimpleNamespace

from rich.console import Console

from fedmem import progress
from fedmem.runs import report
from server.rounds import WatchingGrid


def test_steps_reach_the_innermost_listener_only_while_it_listens():
    outer, inner = [], []
    with progress.listening(lambda *s: outer.append(s)):
        progress.step("a", 0, 2)
        with progress.listening(lambda *s: inner.append(s)):
            progress.step("b", 1, 2, "now")
        progress.step("a", 2, 2)
    progress.step("nobody", 1, 1)
    assert outer == [("a", 0, 2, ""), ("a", 2, 2, "")] and inner == [("b", 1, 2, "now")]


class _Grid:
    """Replies arrive one per pull, as clients finish."""

    pull_interval = 0.0

    def __init__(self, replies: int) -> None:
        self.pending = [f"m{i}" for i in range(replies)]

    def push_messages(self, messages):
        return list(self.pending)

    def pull_messages(self, ids):
        if not self.pending:
            return []
        done = self.pending.pop(0)
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=done))]


def test_the_server_reports_each_client_reply_as_it_arrives():
    steps = []
    watching = WatchingGrid(_Grid(3), {}, server_round=4)
    with progress.listening(lambda *s: steps.append(s)):
        replies = watching._gather([object()] * 3, None, "round 4: clients (fit)")
    assert len(replies) == 3
    assert steps == [("round 4: clients (fit)", n, 3, "") for n in range(4)]


def test_a_timeout_ends_the_wait_with_the_replies_in_so_far():
    grid = _Grid(2)
    grid.pull_messages = lambda ids: []  # nobody answers
    assert WatchingGrid(grid, {})._gather([object()] * 2, 0.0, "t") == []


def _row(n: int) -> dict:
    return {"round": n, "clients": {}, "elapsed_s": float(n)}


def test_off_a_terminal_each_round_prints_one_line_and_nothing_else(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(report, "console", Console(file=out, width=240))
    with report.round_progress(2) as on_round:
        for n in (0, 1, 2):
            progress.step(f"round {n}: clients (fit)", 1, 2)
            progress.step("audits (global model)", 0, 5, "extraction")
            on_round(_row(n))
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["round 0/2", "round 1/2", "round 2/2"]


def test_on_a_terminal_the_bar_shows_the_step_and_the_time_left(monkeypatch):
    out = io.StringIO()
    terminal = Console(file=out, width=160, force_terminal=True, color_system=None)
    monkeypatch.setattr(report, "console", terminal)
    bar = report.bars()
    with bar, report.steps_bar(bar):
        rounds = bar.add_task("rounds", total=4)
        bar.update(rounds, completed=1)
        progress.step("round 2: clients (fit)", 1, 3)
        bar.refresh()
        progress.step("audits (global model)", 2, 5, "membership")
        bar.refresh()
    drawn = out.getvalue()
    assert "round 2: clients (fit)" in drawn and "1/3" in drawn
    assert "audits (global model): membership" in drawn and "2/5" in drawn
    assert "rounds" in drawn and "left" in drawn
