"""Client-level DP (DP-FedAvg) with Flower's legacy DP strategy wrappers and clipping mods.

Each client's update is its new trainable state (LoRA adapter or all weights) minus the
global one it received. It is clipped to `clip_norm` (on the server, or on the client by
`fixedclipping_mod`), and the server adds Gaussian noise of std
noise_multiplier * clip_norm / sampled clients to the average. Under SecAgg+ clipping must
happen on the client: the server only ever sees the sum.

Flower's adaptive-clipping wrappers are not used: in flwr 1.41 the norm moves the wrong way
(its norm bit means "was clipped", its update uses Andrew et al.'s sign for "was not") and
the noise is scaled by the updated norm, not the one the updates were clipped with, so no
epsilon computed for them holds. The config refuses the adaptive modes.

flwr is imported inside the functions: the registry imports this module for its label.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedmem.config import Config
from fedmem.mitigations.registry import Mitigation, StrategyHooks

if TYPE_CHECKING:
    from flwr.clientapp.typing import Mod
    from flwr.server.strategy import Strategy


def dp_wrappers() -> tuple[type, ...]:
    """Flower's two fixed-clipping DP strategy wrappers (server-side, client-side)."""
    from flwr.server.strategy import (
        DifferentialPrivacyClientSideFixedClipping,
        DifferentialPrivacyServerSideFixedClipping,
    )

    return (DifferentialPrivacyServerSideFixedClipping, DifferentialPrivacyClientSideFixedClipping)


def client_weight(config: Config, num_examples: int) -> int:
    """The FedAvg weight a client reports. DP-FedAvg averages uniformly: its noise
    (noise_multiplier * clip / n) assumes no client moves the mean by more than clip / n."""
    return 1 if config.client_dp.enabled else num_examples


def wrap_strategy(config: Config, strategy: Strategy) -> Strategy:
    """`strategy` wrapped in the configured DP wrapper (unchanged when DP is off)."""
    dp = config.client_dp
    if not dp.enabled:
        return strategy
    server_fixed, client_fixed = dp_wrappers()
    n = config.sampled_clients()
    if dp.clipping == "server-fixed":
        return server_fixed(strategy, dp.noise_multiplier, dp.clip_norm, n)
    if dp.clipping == "client-fixed":
        return client_fixed(strategy, dp.noise_multiplier, dp.clip_norm, n)
    raise ValueError(f"client_dp.clipping = {dp.clipping!r}: only the fixed modes are supported")


def round_facts(strategy: Strategy) -> dict[str, float] | None:
    """The clipping norm and noise std the wrapper uses (None when not a DP wrapper)."""
    if not isinstance(strategy, dp_wrappers()):
        return None
    norm = float(strategy.clipping_norm)
    std = strategy.noise_multiplier * norm / strategy.num_sampled_clients
    return {"clip_norm": norm, "noise_std": float(std)}


def strategy_state(strategy: Strategy) -> dict[str, float]:
    """What a resumed run needs of the wrapper: the clipping norm; empty when `strategy` is
    not a DP wrapper."""
    if not isinstance(strategy, dp_wrappers()):
        return {}
    return {"clip_norm": float(strategy.clipping_norm)}


def restore_strategy_state(strategy: Strategy, state: Mapping[str, float]) -> None:
    """Put back what `strategy_state` saved."""
    if isinstance(strategy, dp_wrappers()) and "clip_norm" in state:
        strategy.clipping_norm = float(state["clip_norm"])


def client_mods(config: Config, client: int = 0) -> list[Mod]:
    """Clipping mods for client-side clipping; they go after (inside) `secaggplus_mod`, so
    the update is clipped before it is quantized and masked."""
    dp = config.client_dp
    if not dp.enabled or not dp.clipping.startswith("client-"):
        return []
    from flwr.client.mod import fixedclipping_mod

    return [fixedclipping_mod]


def label(config: Mapping[str, Any]) -> str | None:
    c = config.get("client_dp", {})
    if not c.get("enabled"):
        return None
    return f"client-dp({c['clipping']},sigma={c['noise_multiplier']:g})"


MITIGATION = Mitigation(
    name="client_dp",
    order=40,
    label=label,
    client_weight=client_weight,
    client_mods=client_mods,
    strategy=StrategyHooks(
        wrap=wrap_strategy,
        round_facts=round_facts,
        state=strategy_state,
        restore=restore_strategy_state,
    ),
)
