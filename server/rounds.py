"""Each round's fit stage as the server runs it: numbered, reseeded, its failures recorded.

Flower's `DefaultWorkflow` numbers rounds 1..num_rounds. A resumed run starts it with the
rounds that are left and `RoundFitStage` shifts the round number it sets before each fit
stage (the centralized evaluation that follows reads the same number), so round r of a
resumed run is round r everywhere: in fit configs, message group ids, seeds and metrics.

Before each fit stage the server's global RNGs are reseeded from (seed, round)
(`fedmem.seeding`). During it, `WatchingGrid` notes every client failure (an error reply or
no reply), the SecAgg+ threshold, and the DP-SGD accountant history each client reports, and
reports each reply as it arrives (`fedmem.progress`: clients done of clients sampled).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any, cast

from flwr.app import Context, Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.compat.server.typing import Workflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from fedmem import progress
from fedmem.faults import parse_failure
from fedmem.mitigations.dp_history import HISTORY_METRIC
from fedmem.seeding import seed_global_rngs

FIT_METRICS = "fitres.metrics"  # where Flower's compat layer puts FitRes.metrics
PLAIN_FIT = "fit"


def _stage(message: Message) -> str:
    configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
    return str(configs[Key.STAGE]) if configs is not None and Key.STAGE in configs else PLAIN_FIT


def _short(error: str, limit: int = 300) -> str:
    """The error's first line, at most `limit` characters (Ray's run to kilobytes)."""
    line = error.strip().splitlines()[0] if error.strip() else error
    return line if len(line) <= limit else line[: limit - 3] + "..."


class WatchingGrid:
    """Forwards to a Grid and notes what the replies say about the clients."""

    def __init__(self, grid: Grid, node_clients: dict[int, int], server_round: int = 0) -> None:
        self._grid = grid
        self.server_round = server_round
        self.node_clients = node_clients  # node id -> client index, learnt from replies
        self.failed: dict[int, dict[str, Any]] = {}  # node id -> its first failure
        self.sampled: set[int] = set()
        self.threshold: int | None = None  # SecAgg+ reconstruction threshold
        self.histories: dict[int, dict] = {}  # client -> DP-SGD accountant history

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        stages = {m.metadata.dst_node_id: _stage(m) for m in messages}
        for m in messages:
            configs = m.content.config_records.get(RECORD_KEY_CONFIGS)
            if configs is not None and Key.THRESHOLD in configs:
                self.threshold = int(cast(int, configs[Key.THRESHOLD]))
        self.sampled.update(stages)
        stage = "/".join(sorted(set(stages.values())))
        replies = self._gather(messages, timeout, f"round {self.server_round}: clients ({stage})")
        for reply in replies:
            self._note(reply, stages.get(reply.metadata.src_node_id, PLAIN_FIT))
        answered = {r.metadata.src_node_id for r in replies}
        for node in stages.keys() - answered:
            self._fail(node, None, stages[node], "no reply within the timeout")
        return replies

    def _gather(self, messages: list[Message], timeout: float | None, task: str) -> list[Message]:
        """The grid's own send_and_receive (push all, then pull until every reply is in or
        the timeout passes), reporting each reply as it arrives."""
        waiting = set(self._grid.push_messages(messages))
        total = len(waiting)
        progress.step(task, 0, total)
        end = time.time() + (timeout if timeout is not None else 0.0)
        replies: list[Message] = []
        while timeout is None or time.time() < end:
            pulled = list(self._grid.pull_messages(waiting))
            replies += pulled
            waiting.difference_update(m.metadata.reply_to_message_id for m in pulled)
            if pulled:
                progress.step(task, total - len(waiting), total)
            if not waiting:
                break
            time.sleep(getattr(self._grid, "pull_interval", 3.0))  # Flower's grids: 0.1 / 3 s
        return replies

    def _note(self, reply: Message, stage: str) -> None:
        node = reply.metadata.src_node_id
        if reply.has_error():
            client, error = parse_failure(reply.error.reason)
            self._fail(node, client, stage, error)
            return
        metrics = reply.content.config_records.get(FIT_METRICS)
        if metrics is None or "client" not in metrics:
            return
        client = int(cast(int, metrics["client"]))
        self.node_clients[node] = client
        if HISTORY_METRIC in metrics:
            self.histories[client] = json.loads(cast(str, metrics[HISTORY_METRIC]))

    def _fail(self, node: int, client: int | None, stage: str, error: str) -> None:
        if client is not None:
            self.node_clients[node] = client
        if node not in self.failed:
            client = self.node_clients.get(node, client)
            self.failed[node] = {"client": client, "stage": stage, "error": _short(error)}

    def failures(self) -> list[dict[str, Any]]:
        """One entry per failed client, in client order (unknown clients last)."""
        return sorted(
            self.failed.values(),
            key=lambda f: (f["client"] is None, f["client"] or 0, f["stage"], f["error"]),
        )


class RoundFitStage:
    """Wraps the fit stage (plain or SecAgg+): shifts the round number by the rounds a
    resumed run already has, reseeds the global RNGs, and keeps per round whether the global
    model was updated, which clients failed, and why a round was abandoned."""

    def __init__(
        self,
        inner: Workflow,
        seed: int,
        first_round: int = 1,
        declined: dict[int, str] | None = None,
    ) -> None:
        self.inner = inner
        self.seed = seed
        self.offset = first_round - 1
        self.node_clients: dict[int, int] = {}
        self.outcomes: dict[int, dict[str, Any]] = {}
        self.accountants: dict[int, dict] = {}  # client -> latest DP-SGD accountant history
        # round -> why the strategy declined to aggregate (AuditedFedAvg.declined)
        self.declined = declined if declined is not None else {}

    def __call__(self, grid: Grid, context: Context) -> None:
        cfg = context.state.config_records[MAIN_CONFIGS_RECORD]
        server_round = int(cast(int, cfg[WorkflowKey.CURRENT_ROUND])) + self.offset
        cfg[WorkflowKey.CURRENT_ROUND] = server_round
        seed_global_rngs(self.seed, server_round)
        before = context.state.array_records[MAIN_PARAMS_RECORD]
        watching = WatchingGrid(grid, self.node_clients, server_round)
        self.inner(cast(Grid, watching), context)
        aggregated = context.state.array_records[MAIN_PARAMS_RECORD] is not before
        self.accountants.update(watching.histories)
        outcome: dict[str, Any] = {"aggregated": aggregated, "failures": watching.failures()}
        if not aggregated:
            outcome["abandoned"] = self._why_abandoned(server_round, watching)
        self.outcomes[server_round] = outcome

    def _why_abandoned(self, server_round: int, watching: WatchingGrid) -> str:
        left = len(watching.sampled) - len(watching.failed)
        if watching.threshold is not None and left < watching.threshold:
            return (
                f"SecAgg+ halted: {left} of {len(watching.sampled)} clients left, below the "
                f"reconstruction threshold of {watching.threshold}"
            )
        if server_round in self.declined:
            return self.declined.pop(server_round)
        if watching.failed:
            return (
                f"{len(watching.failed)} client(s) failed and the strategy accepts no "
                "failures (client-level DP wrappers abandon such rounds)"
            )
        return "no client was sampled or returned a result"
