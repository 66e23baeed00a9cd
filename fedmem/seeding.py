"""Every random draw of a run is a function of the run seed and where it happens.

Seeds are derived from (run seed, round, client, stream) by hashing, never carried over from
the previous draw, so a run resumed at round r draws exactly what the uninterrupted run drew
there: no RNG state has to be saved in a checkpoint.

flwr draws from global RNGs that fedmem does not own: `random` for client sampling, and
numpy's global RNG for SecAgg+'s stochastic quantization (client side) and the DP wrappers'
Gaussian noise (server side). `seed_global_rngs` reseeds them at the start of each round on
the server, and `seed_numpy_mod` reseeds numpy in each client before it handles a message.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

# Streams: distinct purposes draw from unrelated seeds even for the same round and client.
SERVER_ROUND, CLIENT_MESSAGE, FAULTS = "server-round", "client-message", "faults"


def derive_seed(seed: int, stream: str, *parts: int) -> int:
    """A 32-bit seed from the run seed, a stream name and integers (rounds, clients)."""
    text = ":".join([str(seed), stream, *(str(p) for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def seed_global_rngs(seed: int, server_round: int) -> None:
    """Reseed Python's and numpy's global RNGs for `server_round` (server process)."""
    derived = derive_seed(seed, SERVER_ROUND, server_round)
    random.seed(derived)
    np.random.seed(derived)


def seed_numpy_mod(seed: int, client: int):
    """A client mod reseeding numpy's global RNG from (seed, round, client) before every
    message: SecAgg+ quantizes stochastically with it. The round is the message's group id,
    which Flower sets to the round for fit and for every SecAgg+ stage."""

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        group = msg.metadata.group_id
        server_round = int(group) if group.isdigit() else 0
        np.random.seed(derive_seed(seed, CLIENT_MESSAGE, server_round, client))
        return call_next(msg, ctxt)

    return mod
