"""Client failures: injected on purpose from `[faults]`, and reported the same way as real ones.

`fault_injection_mod` sits innermost in a client's mod chain, right around local training,
so an injected failure happens at the same point on the plain path and under SecAgg+ (whose
collect stage runs the training). `failure_report_mod` sits outermost: whatever a client
raises (an injected failure, a SecAgg+ drop, a real bug) becomes an error reply naming the
client, which the server records in `metrics.jsonl`.
"""

from __future__ import annotations

import json
import logging
import random

from flwr.app import Context, Error, Message
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.constant import ErrorCode

from fedmem.config import Config
from fedmem.seeding import FAULTS, derive_seed

FIT_INSTRUCTIONS = "fitins.config"  # where Flower's compat layer puts FitIns.config

log = logging.getLogger("fedmem")


class InjectedFailure(RuntimeError):
    """A failure `[faults]` asked for."""


def injected_failure(config: Config, server_round: int, client: int) -> str | None:
    """Why `client` fails its local training in `server_round`, or None."""
    faults = config.faults
    if client == faults.client and (not faults.rounds or server_round in faults.rounds):
        return f"faults.client = {client}: injected failure in round {server_round}"
    if faults.fraction > 0:
        draw = random.Random(derive_seed(config.seed, FAULTS, server_round, client)).random()
        if draw < faults.fraction:
            return f"faults.fraction = {faults.fraction}: injected failure in round {server_round}"
    return None


def fault_injection_mod(config: Config, client: int) -> Mod:
    """Raises `InjectedFailure` instead of training when `[faults]` says so."""

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        is_fit = (
            msg.metadata.message_type == MessageType.TRAIN
            and msg.has_content()
            and FIT_INSTRUCTIONS in msg.content.config_records
        )
        group = msg.metadata.group_id
        if is_fit and group.isdigit():
            reason = injected_failure(config, int(group), client)
            if reason:
                raise InjectedFailure(reason)
        return call_next(msg, ctxt)

    return mod


def failure_report_mod(client: int) -> Mod:
    """Turns anything the client raises into an error reply that names the client."""

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        try:
            return call_next(msg, ctxt)
        except Exception as err:
            if not isinstance(err, InjectedFailure):
                log.exception("client %d failed", client)
            reason = json.dumps({"client": client, "error": f"{type(err).__name__}: {err}"})
            return Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg
            )

    return mod


def parse_failure(reason: str) -> tuple[int | None, str]:
    """(client, error) from an error reply's reason; client None when the reply did not
    come from `failure_report_mod` (e.g. the node itself crashed)."""
    try:
        data = json.loads(reason)
        return int(data["client"]), str(data["error"])
    except (ValueError, TypeError, KeyError):
        return None, reason
