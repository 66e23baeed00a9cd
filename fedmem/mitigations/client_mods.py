"""The one mod every fedmem ClientApp runs: it applies the configured mitigation mods.

Flower takes mods when the ClientApp is built, but fedmem reads its config from the run
config at message time (`fedmem run` presets it, `flwr run .` passes it in). So the ClientApp
gets this single mod, which reads the config from the context and chains, outermost first:
failure reporting (anything raised becomes an error reply naming the client), numpy
reseeding (SecAgg+ quantizes with numpy's global RNG), the SecAgg+ mods, the client-side DP
clipping mods (clip, then quantize and mask), and innermost, around local training, fault
injection.
"""

from __future__ import annotations

from collections.abc import Mapping

from flwr.app import Context, Message
from flwr.client.mod.utils import make_ffn
from flwr.clientapp.typing import ClientAppCallable, Mod

from fedmem.config import Config, from_run_config
from fedmem.faults import failure_report_mod, fault_injection_mod
from fedmem.mitigations import client_dp, secure_aggregation
from fedmem.seeding import seed_numpy_mod


def configured_mods(config: Config, client: int) -> list[Mod]:
    return [
        failure_report_mod(client),
        seed_numpy_mod(config.seed, client),
        *secure_aggregation.client_mods(config, client),
        *client_dp.client_mods(config),
        fault_injection_mod(config, client),
    ]


def mitigation_mod(preset: Mapping[str, bool | int | float | str]) -> Mod:
    """A mod applying `configured_mods` for the config in the context, `preset` on top."""

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        config = from_run_config({**ctxt.run_config, **preset})
        client = int(ctxt.node_config["partition-id"])
        return make_ffn(call_next, configured_mods(config, client))(msg, ctxt)

    return mod
