"""The federated attackers' math: who recovers whose records, and what one update reveals.

Two attackers of a FedAvg round r, both holding each canary's prefix (the record up to its
secret), as the extraction audit's attacker does:

- a curious participant i holds the global model it receives after the round, G_r, and its
  own update D_i = P_i - G_{r-1} (P_i: the state it returned). Its best model of the other
  clients' data is G_r without its own FedAvg share, `without_own_share`:
  G_r - w_i D_i = G_{r-1} + sum_{j != i} w_j D_j. The leakage matrix counts, per
  participant i and client j, the canaries of j it extracts (`leakage_counts`);
- a server that holds one client's update scores each canary's secret under G_{r-1} and
  under G_{r-1} + D_i = P_i: the difference (`difference_scores`) ranks the client's own
  canaries first when the update memorized them.

Plain numbers and numpy arrays in and out; nothing from fedmem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def without_own_share(
    aggregate: Sequence[np.ndarray],
    returned: Sequence[np.ndarray],
    previous: Sequence[np.ndarray],
    weight: float,
) -> list[np.ndarray]:
    """G_r - w_i (P_i - G_{r-1}): the aggregate with participant i's FedAvg share of its
    update taken out, array by array (fp32, as the trainable state travels)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"FedAvg weight {weight} outside [0, 1]")
    if not len(aggregate) == len(returned) == len(previous):
        raise ValueError(
            f"{len(aggregate)} aggregate, {len(returned)} returned and {len(previous)} "
            "previous arrays: the states do not match"
        )
    out = []
    for g, p, b in zip(aggregate, returned, previous, strict=True):
        update = np.asarray(p, np.float64) - np.asarray(b, np.float64)
        out.append((np.asarray(g, np.float64) - weight * update).astype(np.float32))
    return out


def fedavg_weights(examples: Mapping[int, int]) -> dict[int, float]:
    """Client -> its FedAvg weight, its examples over all returned clients' examples."""
    total = sum(examples.values())
    if total <= 0:
        raise ValueError("FedAvg weights: the clients report no examples")
    return {client: n / total for client, n in examples.items()}


def leakage_counts(
    extracted: Mapping[int, Mapping[str, bool]],
    holders: Mapping[str, frozenset[int]],
    clients: Sequence[int],
) -> dict[int, dict[int, tuple[int, int]]]:
    """M[i][j] = (canaries of client j that participant i extracted, canaries of j counted).

    `extracted[i][canary_id]`: whether participant i's model reproduced the canary's secret;
    `holders[canary_id]`: the clients holding at least one copy of it. Off the diagonal only
    canaries participant i does not hold itself are counted (a record i holds is no other
    client's secret to it); the diagonal counts i's own canaries.
    """
    matrix: dict[int, dict[int, tuple[int, int]]] = {}
    for i in clients:
        row: dict[int, tuple[int, int]] = {}
        outcome = extracted[i]
        for j in clients:
            ids = [c for c, held in holders.items()
                   if j in held and (i == j or i not in held)]
            row[j] = (sum(bool(outcome[c]) for c in ids), len(ids))
        matrix[i] = row
    return matrix


def others_counts(
    extracted: Mapping[str, bool], holders: Mapping[str, frozenset[int]], participant: int
) -> tuple[int, int]:
    """(canaries held by others only that the participant extracted, such canaries): each
    canary once, however many other clients hold it."""
    ids = [c for c, held in holders.items() if held and participant not in held]
    return sum(bool(extracted[c]) for c in ids), len(ids)


def difference_scores(
    loss_before: Mapping[str, float], loss_after: Mapping[str, float]
) -> dict[str, float]:
    """Canary -> secret loss under the model before the update minus under the model after
    it (nats per token): how much the update raised the secret's log-likelihood."""
    if loss_before.keys() != loss_after.keys():
        raise ValueError("difference scores: the two models were scored on different canaries")
    return {c: loss_before[c] - loss_after[c] for c in loss_before}


def split_scores(
    scores: Mapping[str, float], positive: set[str], negative: set[str]
) -> tuple[list[float], list[float]]:
    """The scores of the positive and the negative canaries, in id order."""
    return ([scores[c] for c in sorted(positive)], [scores[c] for c in sorted(negative)])
