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
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from flwr.app import Context, Message
    from flwr.clientapp.typing import ClientAppCallable

# Streams: distinct purposes draw from unrelated seeds even for the same round and client.
SERVER_ROUND, CLIENT_MESSAGE, FAULTS = "server-round", "client-message", "faults"
MIA_MEMBERS, EXPOSURE_CANDIDATES = "mia-members", "exposure-candidates"
DP_CANARY_DIRECTIONS, WEIGHT_NOISE = "dp-canary-directions", "weight-noise"
# DP-SGD gradient canaries: which (coordinates, signs, inclusion bits), and when inserted
GRADIENT_CANARIES, GRADIENT_CANARY_DRAWS = "dp-gradient-canaries", "dp-gradient-canary-draws"
AUC_BOOTSTRAP, EXPOSURE_BOOTSTRAP = "auc-bootstrap", "exposure-bootstrap"  # audit intervals
EXTRACTION_BOOTSTRAP, LOSS_GAP_BOOTSTRAP = "extraction-bootstrap", "loss-gap-bootstrap"
HELDOUT_SAMPLE = "heldout-sample"  # the held-out samples the per-round audits score

# The data and the local training draw from `seed * 1_000_003 + offset`, as they always
# have, so earlier runs reproduce. The offsets never meet: the data streams are 1..8 and
# training seeds are at least 1_009 (rounds and epochs start at 1). Every other draw takes
# `derive_seed` with a stream name of its own.
_LINEAR = 1_000_003
DATA_STREAMS = {
    "split": 1,
    "partition": 2,
    "canaries": 3,
    "inject": 4,
    "exposure": 5,
    "exposure-inject": 6,
    "audit-records": 7,
    "audit-inject": 8,
}


def derive_seed(seed: int, stream: str, *parts: int) -> int:
    """A 32-bit seed from the run seed, a stream name and integers (rounds, clients)."""
    text = ":".join([str(seed), stream, *(str(p) for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def data_seed(seed: int, stream: str) -> int:
    """The seed of one of the data's streams (`DATA_STREAMS`)."""
    return seed * _LINEAR + DATA_STREAMS[stream]


def training_seed(seed: int, server_round: int, client: int = 0) -> int:
    """The seed of one local training call: client `client` in round `server_round` (the
    centralized baseline: client 0, the round being the epoch)."""
    return (seed * _LINEAR + server_round * 1_009 + client) % 2**31


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
