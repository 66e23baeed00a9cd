"""The flwr half of secure aggregation (`fedmem.mitigations.secure_aggregation`): SecAgg+'s
fit workflow, made tolerant of early dropouts, and the client mods. Private (not scanned by
the registry): it imports flwr.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.server.workflow import SecAggPlusWorkflow

from fedmem.mitigations.dp_history import CANARY_SUMS_METRIC

FIT_METRICS_RECORD = "fitres.metrics"  # where Flower's compat layer puts FitRes.metrics


class DropoutTolerantSecAggPlus(SecAggPlusWorkflow):
    """flwr 1.41's SecAgg+, surviving a client that drops before its key shares were sent.

    Upstream, a node that fails at `setup` or `share_keys` stays in the sampled set, so the
    unmask stage asks the survivors for key shares of it that they never received: each
    survivor raises (KeyError) and the whole round is lost, however many survive. Such a
    node added no pairwise mask to anyone's vector (clients mask only with the peers whose
    shares they hold), so there is nothing of it to unmask: after `share_keys` the sampled
    set is cut to the nodes still active, and later dropouts are recovered as upstream.
    """

    def share_keys_stage(self, grid, context, state) -> bool:
        ok = super().share_keys_stage(grid, context, state)
        state.sampled_node_ids = set(state.active_node_ids)
        return ok


def drop_at_stage(stage: str) -> Mod:
    """A mod that fails this client at one SecAgg+ stage (fault injection)."""

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        if configs is not None and configs.get(Key.STAGE) == stage:
            raise RuntimeError(f"secagg.drop_client: dropped at SecAgg+ stage {stage!r}")
        return call_next(msg, ctxt)

    return mod


def secaggplus_mod_counting_bytes(
    msg: Message, ctxt: Context, call_next: ClientAppCallable
) -> Message:
    """`secaggplus_mod`, with the client's `bytes_sent` metric set to the masked vector it
    actually uploads (not the size of its float state, which never leaves the client), and
    without its gradient-canary sums: fit metrics travel unmasked, and those sums are
    per-client coordinates of its privatized gradients, which SecAgg+ keeps from the server
    (the DP audit's all-iterates statistic says it is absent, and why)."""
    out = secaggplus_mod(msg, ctxt, call_next)
    if out.has_error():
        return out
    configs = out.content.config_records[RECORD_KEY_CONFIGS]
    metrics = out.content.config_records.get(FIT_METRICS_RECORD)
    if metrics is not None and CANARY_SUMS_METRIC in metrics:
        del metrics[CANARY_SUMS_METRIC]
    if Key.MASKED_PARAMETERS in configs and metrics is not None and "bytes_sent" in metrics:
        metrics["bytes_sent"] = sum(len(b) for b in configs[Key.MASKED_PARAMETERS])
    return out
