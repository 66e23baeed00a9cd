"""Secure aggregation with Flower's SecAgg+ (legacy workflow path).

The server runs `SecAggPlusWorkflow` as the fit stage of `DefaultWorkflow`; each client runs
`secaggplus_mod`. Clients upload quantized, masked trainable states; the server unmasks only
their weighted sum. What Flower does NOT mask: each client's `num_examples` and fit metrics
travel in the clear, and the strategy's `aggregate_fit` receives one result per client, every
one carrying the same aggregate as its parameters.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.compat.server.typing import Workflow
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.default_workflows import default_fit_workflow

from fedmem.config import Config, ConfigError
from fedmem.data.federated import build_federated_data
from fedmem.mitigations.client_dp import client_weight
from fedmem.models.loading import load_tokenizer

FIT_METRICS_RECORD = "fitres.metrics"  # where Flower's compat layer puts FitRes.metrics


def max_weight(config: Config) -> float:
    """SecAgg+'s `max_weight`: the configured one, or the largest weight a client reports.

    Each client scales its state by weight / max_weight before quantizing: a larger weight
    would overflow, and a needlessly large bound wastes quantization precision."""
    sizes = [len(texts) for texts in build_federated_data(config, load_tokenizer).client_texts]
    largest = max(client_weight(config, n) for n in sizes)
    configured = config.secagg.max_weight
    if configured and configured < largest:
        raise ConfigError(
            f"secagg.max_weight = {configured:g}: a client reports weight {largest} "
            "(set 0 to derive it from the data)"
        )
    return configured or float(largest)


def _count_or_fraction(value: float) -> int | float:
    return int(value) if value > 1 else float(value)


def fit_workflow(config: Config) -> Workflow:
    """The fit stage of `DefaultWorkflow`: SecAgg+ when enabled, else Flower's default."""
    if not config.secagg.enabled:
        return default_fit_workflow
    s = config.secagg
    return DropoutTolerantSecAggPlus(
        num_shares=_count_or_fraction(s.num_shares),
        reconstruction_threshold=_count_or_fraction(s.reconstruction_threshold),
        max_weight=max_weight(config),
        clipping_range=s.clipping_range,
        quantization_range=s.quantization_range,
        timeout=s.timeout,
    )


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


def client_mods(config: Config, client: int) -> list[Mod]:
    """Mods, outermost first, that this client runs for secure aggregation."""
    if not config.secagg.enabled:
        return []
    mods: list[Mod] = []
    if config.secagg.drop_client == client:
        mods.append(drop_at_stage(config.secagg.drop_stage))
    return [*mods, secaggplus_mod_counting_bytes]


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
    actually uploads (not the size of its float state, which never leaves the client)."""
    out = secaggplus_mod(msg, ctxt, call_next)
    if out.has_error():
        return out
    configs = out.content.config_records[RECORD_KEY_CONFIGS]
    metrics = out.content.config_records.get(FIT_METRICS_RECORD)
    if Key.MASKED_PARAMETERS in configs and metrics is not None and "bytes_sent" in metrics:
        metrics["bytes_sent"] = sum(len(b) for b in configs[Key.MASKED_PARAMETERS])
    return out
