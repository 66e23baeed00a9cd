"""Per-round cost of the fit stage (plain FedAvg or SecAgg+), measured at the server."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, cast

from flwr.app import Context, Message
from flwr.common.serde import message_to_proto
from flwr.compat.server.typing import Workflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key
from flwr.serverapp import Grid


def message_nbytes(message: Message) -> int:
    """Size of the message as Flower serializes it on the wire (protobuf)."""
    return message_to_proto(message).ByteSize()


class CountingGrid:
    """Forwards to a Grid, counting the bytes of every message sent and received."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.bytes_down = self.bytes_up = self.messages = 0
        self.counting_s = 0.0  # time spent measuring, taken out of the stage time

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def _count(self, messages: list[Message], down: bool) -> None:
        start = time.perf_counter()
        nbytes = sum(message_nbytes(m) for m in messages)
        if down:
            self.bytes_down += nbytes
        else:
            self.bytes_up += nbytes
        self.messages += len(messages)
        self.counting_s += time.perf_counter() - start

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        self._count(messages, down=True)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self._count(replies, down=False)
        return replies


class MeasuredFitWorkflow:
    """Runs a fit workflow and keeps, per round, its wall time and message bytes."""

    def __init__(self, inner: Workflow) -> None:
        self.inner = inner
        self.rounds: dict[int, dict[str, float | int]] = {}

    def __call__(self, grid: Grid, context: Context) -> None:
        current = cast(int, context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])
        counting = CountingGrid(grid)
        start = time.perf_counter()
        self.inner(cast(Grid, counting), context)
        seconds = time.perf_counter() - start - counting.counting_s
        self.rounds[current] = {
            "seconds": round(seconds, 4),
            "bytes_down": counting.bytes_down,
            "bytes_up": counting.bytes_up,
            "messages": counting.messages,
        }
