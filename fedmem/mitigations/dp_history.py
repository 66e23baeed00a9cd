"""What of DP-SGD's run travels between a client and the server besides the update (message
keys and encodings only: the apps import this without importing opacus)."""

from __future__ import annotations

import numpy as np

# A client reports its accountant history (JSON of `dp_sgd.history_to_record`) in its fit
# metrics under this key, so the server can checkpoint it and hand it back to a resumed run.
HISTORY_METRIC = "dp_history"
# The fit-config key under which a resumed server hands clients their saved histories
# (JSON: client index -> record).
RESUMED_HISTORIES = "dp_sgd.resumed_histories"
# A client with gradient canaries reports, under this key, each of its canaries' sum over
# the fit's steps of the privatized gradient at the canary's coordinate (`encode_sums`), for
# the server's all-iterates audit. Never under SecAgg+, whose mod drops it (the server must
# see no per-client part of an update there).
CANARY_SUMS_METRIC = "dp_canary_gradient_sums"


def encode_sums(sums: np.ndarray) -> bytes:
    """float64 little-endian bytes (a Flower metric may be bytes, not an array)."""
    return np.asarray(sums, dtype="<f8").tobytes()


def decode_sums(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f8").copy()
