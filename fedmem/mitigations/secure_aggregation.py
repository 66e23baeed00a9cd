"""Secure aggregation with Flower's SecAgg+ (legacy workflow path).

The server runs `SecAggPlusWorkflow` as the fit stage of `DefaultWorkflow`; each client runs
`secaggplus_mod`. Clients upload quantized, masked trainable states; the server unmasks only
their weighted sum. What Flower does NOT mask: each client's `num_examples` and fit metrics
travel in the clear, and the strategy's `aggregate_fit` receives one result per client, every
one carrying the same aggregate as its parameters.

This module is what the registry reads; the flwr half (the dropout-tolerant workflow and the
client mods) is `fedmem.mitigations._secagg_flower`, imported when a run uses SecAgg+.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedmem.config import Config, ConfigError
from fedmem.mitigations import registry
from fedmem.mitigations.registry import Mitigation

if TYPE_CHECKING:
    from flwr.clientapp.typing import Mod
    from flwr.compat.server.typing import Workflow


def max_weight(config: Config) -> float:
    """SecAgg+'s `max_weight`: the configured one, or the largest weight a client reports.

    Each client scales its state by weight / max_weight before quantizing: a larger weight
    would overflow, and a needlessly large bound wastes quantization precision."""
    from fedmem.data.federated import client_sizes
    from fedmem.models.loading import load_tokenizer

    sizes = client_sizes(config, load_tokenizer)
    largest = max(registry.client_weight(config, n) for n in sizes)
    configured = config.secagg.max_weight
    if configured and configured < largest:
        raise ConfigError(
            f"secagg.max_weight = {configured:g}: a client reports weight {largest} "
            "(set 0 to derive it from the data)"
        )
    return configured or float(largest)


def _count_or_fraction(value: float) -> int | float:
    return int(value) if value > 1 else float(value)


def fit_workflow(config: Config) -> Workflow | None:
    """The fit stage of `DefaultWorkflow` under SecAgg+; None when it is off (Flower's
    default stage)."""
    if not config.secagg.enabled:
        return None
    from fedmem.mitigations._secagg_flower import DropoutTolerantSecAggPlus

    s = config.secagg
    return DropoutTolerantSecAggPlus(
        num_shares=_count_or_fraction(s.num_shares),
        reconstruction_threshold=_count_or_fraction(s.reconstruction_threshold),
        max_weight=max_weight(config),
        clipping_range=s.clipping_range,
        quantization_range=s.quantization_range,
        timeout=s.timeout,
    )


def client_mods(config: Config, client: int) -> list[Mod]:
    """Mods, outermost first, that this client runs for secure aggregation."""
    if not config.secagg.enabled:
        return []
    from fedmem.mitigations._secagg_flower import drop_at_stage, secaggplus_mod_counting_bytes

    mods: list[Mod] = []
    if config.secagg.drop_client == client:
        mods.append(drop_at_stage(config.secagg.drop_stage))
    return [*mods, secaggplus_mod_counting_bytes]


def label(config: Mapping[str, Any]) -> str | None:
    return "secagg" if config.get("secagg", {}).get("enabled") else None


MITIGATION = Mitigation(
    name="secagg",
    order=50,
    label=label,
    client_mods=client_mods,
    fit_workflow=fit_workflow,
)
