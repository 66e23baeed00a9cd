"""The one mod every fedmem ClientApp runs: it applies the configured mitigation mods.

Flower takes mods when the ClientApp is built, but fedmem reads its config from the run
config at message time (`fedmem run` presets it, `flwr run .` passes it in). So the ClientApp
gets this single mod, which reads the config from the context and chains, outermost first:
failure reporting (anything raised becomes an error reply naming the client), numpy
reseeding (SecAgg+ quantizes with numpy's global RNG), the registered mitigations' mods (a
later mitigation's outside an earlier one's: SecAgg+, then the client-side DP clipping mods,
so an update is clipped, then quantized and masked), and innermost, around local training,
fault injection.

flwr is imported inside the functions: the registry imports every module of this package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from fedmem.config import Config, from_run_config
from fedmem.mitigations import registry

if TYPE_CHECKING:
    from flwr.app import Context, Message
    from flwr.clientapp.typing import ClientAppCallable, Mod


def configured_mods(config: Config, client: int) -> list[Mod]:
    from fedmem.faults import failure_report_mod, fault_injection_mod
    from fedmem.seeding import seed_numpy_mod

    return [
        failure_report_mod(client),
        seed_numpy_mod(config.seed, client),
        *registry.client_mods(config, client),
        fault_injection_mod(config, client),
    ]


def mitigation_mod(preset: Mapping[str, bool | int | float | str]) -> Mod:
    """A mod applying `configured_mods` for the config in the context, `preset` on top."""
    from flwr.client.mod.utils import make_ffn

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        config = from_run_config({**ctxt.run_config, **preset})
        client = int(ctxt.node_config["partition-id"])
        return make_ffn(call_next, configured_mods(config, client))(msg, ctxt)

    return mod
