"""The federated attackers: curious participants and a server that holds one client's update.

Not an audit of one model (its `run` is None, so `audit_model` skips it): it needs a round's
models together, the global model before the round, the aggregate after it and, on the plain
path, each client's returned state. The server app measures it after aggregating
(`FederatedAttack.measure`, see server/app.py) and the run recorder puts the result in the
round's row under `federated_attack`. The declaration below gives its terminal tables, its
store table and its report sections. Threat model and limits: docs/threat-model-secagg.md.

Every attacker knows each canary's prefix (the record up to its secret, `attack.prefix_tokens`
tokens of it) and decodes greedily, as the extraction audit's attacker; approximate = token
BLEU above 0.75 (attacks/approximate.py); the difference attack scores a secret by the drop
of its mean loss (nats/token) from the model before the update to the model after it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedmem.audits.declaration import Audit, ReportView, Section, StoreTable
from fedmem.audits.extraction import decoding_for
from fedmem.audits.intervals import auc_ci, rate_ci
from fedmem.audits.populations import canaries_by_id, canary_targets

if TYPE_CHECKING:
    import numpy as np
    import torch

    from fedmem.config import Config

NAME = "federated_attack"
HIDDEN = "hidden by SecAgg+"
SECAGG_HIDES_UPDATES = (
    "under SecAgg+ the server unmasks only the sum of the updates: it never holds one "
    "client's update, so this attack has nothing to run on"
)
# Vantage rows of the server-vantage table, in order.
AGGREGATE = "server: aggregate only"
ONE_UPDATE = "server: one client's update (pooled over clients)"
PARTICIPANTS = "curious participant (pooled over participants)"
BEST = "curious participant (best one)"


def due(config: Config, server_round: int) -> bool:
    """Whether the attackers are measured after `server_round`: every
    `attack.participants_every` rounds and always after the last."""
    if not config.attack.participants or config.mode != "federated" or server_round < 1:
        return False
    every = config.attack.participants_every
    return server_round % every == 0 or server_round == config.federation.rounds


def _rate(successes: int, n: int) -> dict:
    return {"extracted": successes, "n": n, "rate": successes / n if n else None,
            "rate_ci": rate_ci(successes, n)}


def _auc(members: list[float], nonmembers: list[float], seed: int) -> dict:
    from attacks.statistics import mann_whitney_auc

    if not members or not nonmembers:
        return {"auc": None, "auc_ci": None, "members": len(members),
                "nonmembers": len(nonmembers)}
    return {"auc": mann_whitney_auc(members, nonmembers),
            "auc_ci": auc_ci(members, nonmembers, seed), "members": len(members),
            "nonmembers": len(nonmembers)}


def _vantage(exact: tuple[int, int], approx: tuple[int, int], auc: dict, **facts: Any) -> dict:
    return {"exact": _rate(*exact), "approximate": _rate(*approx), "difference": auc, **facts}


class FederatedAttack:
    """Measures the two federated attackers on one round's models (a scratch model of its own,
    so the global one is untouched)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._model: torch.nn.Module | None = None

    def _on(self, state: list[np.ndarray]) -> torch.nn.Module:
        from fedmem.models.loading import build_model, set_trainable_state

        if self._model is None:
            self._model = build_model(self.config, seed=self.config.seed)
            self._model.eval()
        set_trainable_state(self._model, state)
        return self._model

    def _losses(self, state: list[np.ndarray]) -> dict[str, float]:
        """Canary id -> mean loss (nats/token) of its secret given the attacker's prefix."""
        from attacks.loss_gap import secret_losses
        from fedmem.models.loading import load_tokenizer

        targets = canary_targets(self.config, self.config.attack.prefix_tokens)
        losses = secret_losses(
            self._on(state),
            [t.prefix_ids + t.suffix_ids for t in targets],
            [len(t.prefix_ids) for t in targets],
            load_tokenizer(self.config).pad_token_id,
            self.config.attack.batch_size,
        )
        return {t.canary_id: loss for t, loss in zip(targets, losses, strict=True)}

    def _outcomes(self, state: list[np.ndarray], ids: set[str]) -> dict[str, tuple[bool, bool]]:
        """Canary id -> (exact, approximate) for the canaries `ids`, greedy from the prefix."""
        from attacks.approximate import is_approximately_memorized
        from attacks.extraction import extract
        from fedmem.models.loading import load_tokenizer

        targets = [t for t in canary_targets(self.config, self.config.attack.prefix_tokens)
                   if t.canary_id in ids]
        if not targets:
            return {}
        results = extract(self._on(state), targets, load_tokenizer(self.config).pad_token_id,
                          self.config.attack.batch_size, decoding_for(self.config, "greedy"))
        return {
            r.canary_id: (r.exact, is_approximately_memorized(list(r.generated_ids),
                                                              list(t.suffix_ids)))
            for r, t in zip(results, targets, strict=True)
        }

    def measure(
        self,
        server_round: int,
        previous: list[np.ndarray],
        aggregate: list[np.ndarray],
        returned: Mapping[int, list[np.ndarray]] | None,
        examples: Mapping[int, int] | None,
    ) -> dict:
        """Both attackers after `server_round`. `previous`: the global state the clients
        trained from; `aggregate`: the global state after the round; `returned` and
        `examples`: each client's returned state and example count (the plain path), None
        under SecAgg+, where the server never holds them."""
        from attacks.federated import (
            difference_scores,
            fedavg_weights,
            leakage_counts,
            others_counts,
            split_scores,
            without_own_share,
        )

        start = time.perf_counter()
        seed = self.config.seed + server_round
        canaries = canaries_by_id(self.config)
        holders = {c.canary_id: frozenset(c.clients) for c in canaries.values() if c.replicas}
        injected = set(holders)
        twins = {c.canary_id for c in canaries.values() if not c.replicas}
        clients = list(range(self.config.federation.num_clients))

        before = self._losses(previous)
        after = self._losses(aggregate)
        on_aggregate = self._outcomes(aggregate, injected)
        aggregate_diff = difference_scores(before, after)
        aggregate_row = _vantage(
            _count(on_aggregate, injected, 0), _count(on_aggregate, injected, 1),
            _auc(*split_scores(aggregate_diff, injected, twins), seed),
            canaries="injected canaries (all clients); AUC: injected vs never-injected twins",
        )

        # Curious participants: the aggregate without their own share where the server can
        # compute it honestly (the plain path), else the aggregate as every client receives it.
        own_share_removed = returned is not None
        views: dict[int, tuple[dict, dict]] = {}
        if returned is not None and examples is not None:
            weights = fedavg_weights({c: examples[c] for c in returned})
            for i in clients:
                if i not in returned:  # not sampled: it holds the aggregate only
                    views[i] = (on_aggregate, after)
                    continue
                state = without_own_share(aggregate, returned[i], previous, weights[i])
                views[i] = (self._outcomes(state, injected), self._losses(state))
        else:
            views = {i: (on_aggregate, after) for i in clients}
        exact = {i: {c: o[0] for c, o in views[i][0].items()} for i in clients}
        approx = {i: {c: o[1] for c, o in views[i][0].items()} for i in clients}
        matrix_exact = leakage_counts(exact, holders, clients)
        matrix_approx = leakage_counts(approx, holders, clients)
        per_participant: dict[str, dict] = {}
        pooled_members: list[float] = []
        pooled_twins: list[float] = []
        for i in clients:
            others = {c for c, held in holders.items() if i not in held}
            diff = difference_scores(before, views[i][1])
            members, nonmembers = split_scores(diff, others, twins)
            pooled_members += members
            pooled_twins += nonmembers
            per_participant[str(i)] = _vantage(
                others_counts(exact[i], holders, i), others_counts(approx[i], holders, i),
                _auc(members, nonmembers, seed + 1 + i),
            )
        pooled_row = _vantage(
            _pooled(per_participant, "exact"), _pooled(per_participant, "approximate"),
            _auc(pooled_members, pooled_twins, seed),
            canaries="other clients' canaries; AUC: those vs never-injected twins",
        )
        best = max(clients, key=lambda i: _rank(per_participant[str(i)]))

        result: dict[str, Any] = {
            "round": server_round,
            "participants": {
                "own_share_removed": own_share_removed,
                "matrix": {
                    str(i): {str(j): {"exact": _rate(*matrix_exact[i][j]),
                                      "approximate": _rate(*matrix_approx[i][j])}
                             for j in clients}
                    for i in clients
                },
                "by_participant": per_participant,
            },
            "vantage": {
                "aggregate": aggregate_row,
                "one_update": (
                    self._one_update(before, returned, holders, twins, seed)
                    if returned is not None
                    else {"status": "hidden", "reason": SECAGG_HIDES_UPDATES}
                ),
                "participants": pooled_row,
                "best_participant": {"participant": best, **per_participant[str(best)]},
            },
        }
        result["seconds"] = round(time.perf_counter() - start, 3)
        return result

    def _one_update(
        self,
        before: dict[str, float],
        returned: Mapping[int, list[np.ndarray]],
        holders: dict[str, frozenset[int]],
        twins: set[str],
        seed: int,
    ) -> dict:
        """The server with client i's update: G_{r-1} + D_i is the state i returned. Its own
        canaries should score highest by the difference; they are extracted from it greedily."""
        from attacks.federated import difference_scores, split_scores

        by_client: dict[str, dict] = {}
        members: list[float] = []
        nonmembers: list[float] = []
        for i in sorted(returned):
            own = {c for c, held in holders.items() if i in held}
            rest = (set(holders) - own) | twins
            diff = difference_scores(before, self._losses(returned[i]))
            mine, others = split_scores(diff, own, rest)
            members += mine
            nonmembers += others
            outcomes = self._outcomes(returned[i], own)
            by_client[str(i)] = _vantage(
                _count(outcomes, own, 0), _count(outcomes, own, 1),
                _auc(mine, others, seed + 101 + i),
            )
        return {
            "status": "measured",
            **_vantage(
                _pooled(by_client, "exact"), _pooled(by_client, "approximate"),
                _auc(members, nonmembers, seed + 100),
                canaries="each client's own canaries; AUC: own vs other clients' canaries "
                "and never-injected twins, pooled over clients",
            ),
            "by_client": by_client,
        }


def _count(outcomes: dict[str, tuple[bool, bool]], ids: set[str], which: int) -> tuple[int, int]:
    return sum(outcomes[c][which] for c in ids), len(ids)


def _pooled(rows: dict[str, dict], key: str) -> tuple[int, int]:
    return (sum(r[key]["extracted"] for r in rows.values()),
            sum(r[key]["n"] for r in rows.values()))


def _rank(row: dict) -> tuple[float, float, float]:
    return (row["exact"]["rate"] or 0.0, row["approximate"]["rate"] or 0.0,
            row["difference"]["auc"] or 0.0)


# ------------------------------------------------------------------------ tables


def _pct(entry: Mapping | None) -> str:
    """'12/32 = 37.5 % [21.1, 56.3]' (Clopper-Pearson), or 'n/a' with no canaries."""
    if not entry or not entry.get("n"):
        return "n/a (no canaries)"
    low, high = entry["rate_ci"]
    return (f"{entry['extracted']}/{entry['n']} = {entry['rate']:.1%} "
            f"[{low:.1%}, {high:.1%}]").replace("%", " %")


def _auc_text(entry: Mapping | None) -> str:
    """'0.91 [0.80, 0.99]', with 'inconclusive' when the interval holds 0.5."""
    if not entry or entry.get("auc") is None:
        return "n/a (an empty side)"
    low, high = entry["auc_ci"]
    verdict = " inconclusive" if low <= 0.5 <= high else ""
    return f"{entry['auc']:.2f} [{low:.2f}, {high:.2f}]{verdict}"


def vantage_rows(attack: Mapping) -> list[list[str]]:
    """The server-vantage table: one row per vantage, header first."""
    rows = [["vantage", "exact extraction", "approximate (BLEU > 0.75)",
             "difference-attack AUC"]]
    v = attack["vantage"]
    rows.append([AGGREGATE, _pct(v["aggregate"]["exact"]), _pct(v["aggregate"]["approximate"]),
                 _auc_text(v["aggregate"]["difference"])])
    one = v["one_update"]
    if one.get("status") == "hidden":
        rows.append([ONE_UPDATE, HIDDEN, HIDDEN, HIDDEN])
    else:
        rows.append([ONE_UPDATE, _pct(one["exact"]), _pct(one["approximate"]),
                     _auc_text(one["difference"])])
    own = "" if attack["participants"]["own_share_removed"] else " (global as received)"
    rows.append([PARTICIPANTS + own, _pct(v["participants"]["exact"]),
                 _pct(v["participants"]["approximate"]),
                 _auc_text(v["participants"]["difference"])])
    b = v["best_participant"]
    rows.append([f"curious participant (best: client {b['participant']}){own}",
                 _pct(b["exact"]), _pct(b["approximate"]), _auc_text(b["difference"])])
    return rows


def matrix_rows(attack: Mapping, key: str = "exact") -> list[list[str]]:
    """The leakage matrix: participant rows, client columns, cells 'k/n' (own records
    marked '(own)'), header first."""
    matrix = attack["participants"]["matrix"]
    clients = sorted(next(iter(matrix.values())), key=int)
    rows = [["participant \\ records of", *[f"client {j}" for j in clients]]]
    for i in sorted(matrix, key=int):
        cells = []
        for j in clients:
            cell = matrix[i][j][key]
            text = f"{cell['extracted']}/{cell['n']}"
            cells.append(f"{text} (own)" if i == j else text)
        rows.append([f"participant {i}", *cells])
    return rows


def details(summary: Mapping) -> list[Any]:
    """The terminal's compact tables: the server-vantage table and the exact matrix."""
    from rich.table import Table

    attack = (summary.get("final") or {}).get(NAME)
    if not attack:
        return []
    out: list[Any] = []
    title = f"federated attackers, round {attack['round']} (95 % intervals)"
    for heading, rows in (
        (title, vantage_rows(attack)),
        ("leakage matrix, exact: canaries of each client a participant extracts "
         "(off the diagonal: records it does not hold)", matrix_rows(attack)),
    ):
        table = Table(title=heading)
        for name in rows[0]:
            table.add_column(name)
        for row in rows[1:]:
            table.add_row(*row)
        out.append(table)
    return out


# ------------------------------------------------------------------------ store and report

FEDERATED_ATTACK_DDL = """
CREATE TABLE IF NOT EXISTS federated_attack (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, kind TEXT NOT NULL, position INTEGER NOT NULL,
    cells_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS federated_attack_run ON federated_attack (run_id);
"""


def store_rows(run_dir: Path) -> list[tuple]:
    """The final round's tables as the report shows them: kind 'vantage', 'matrix exact'
    and 'matrix approximate', one row per table row (position 0: its header), cells JSON."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return []
    attack = json.loads(path.read_text()).get("final", {}).get(NAME)
    if not attack:
        return []
    tables = {"vantage": vantage_rows(attack), "matrix exact": matrix_rows(attack, "exact"),
              "matrix approximate": matrix_rows(attack, "approximate")}
    return [(attack["round"], kind, k, json.dumps(row))
            for kind, rows in tables.items() for k, row in enumerate(rows)]


def _section(kind: str):
    """A report section: each run's table of `kind`, rows prefixed with the run."""

    def rows(view: ReportView) -> list[list[str]]:
        frame = view.table(NAME)
        if frame is None or frame.empty or not (frame["kind"] == kind).any():
            return [["run"]]
        frame = frame[frame["kind"] == kind].sort_values(["combination", "seed", "position"])
        header = json.loads(frame[frame["position"] == 0].iloc[0]["cells_json"])
        out = [["run", *header]]
        for run in frame[frame["position"] > 0].itertuples():
            label = f"{run.combination} (seed {run.seed}, round {run.round})"
            out.append([label, *json.loads(run.cells_json)])
        return out

    return rows


AUDIT = Audit(
    name=NAME,
    order=60,
    enabled=lambda config: config.attack.participants,
    run=None,  # measured by the server on a round's models together (module docstring)
    details=details,
    tables=(StoreTable(NAME, FEDERATED_ATTACK_DDL,
                       ("round", "kind", "position", "cells_json"), store_rows),),
    sections=(
        Section("Federated attackers: what the server and the participants recover "
                "(final round; SecAgg+ hides one client's update, the aggregate still leaks)",
                _section("vantage")),
        Section("Leakage matrix, exact extraction: canaries of each client (column) that "
                "each curious participant (row) extracts; off the diagonal only records the "
                "participant does not hold", _section("matrix exact")),
        Section("Leakage matrix, approximate extraction (token BLEU > 0.75)",
                _section("matrix approximate")),
    ),
)
