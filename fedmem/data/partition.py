"""Splitting a dataset's item indices among federated clients."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

# partition_dirichlet redraws all proportions at most this many times to satisfy min_size.
DIRICHLET_MAX_TRIES = 100


def _check_clients(num_clients: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")


def partition_iid(n_items: int, num_clients: int, seed: int) -> list[list[int]]:
    """Shuffle ``range(n_items)`` and cut it into ``num_clients`` parts whose sizes differ
    by at most one (the first ``n_items % num_clients`` parts get the extra item)."""
    _check_clients(num_clients)
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}")
    order = list(range(n_items))
    random.Random(seed).shuffle(order)
    base, extra = divmod(n_items, num_clients)
    parts: list[list[int]] = []
    start = 0
    for client in range(num_clients):
        size = base + (client < extra)
        parts.append(order[start : start + size])
        start += size
    return parts


def partition_by_source(
    sources: Sequence[str], num_clients: int, order: Sequence[str] = ()
) -> list[list[int]]:
    """Give each distinct source, in sorted order (or in `order`, which must list every
    source once), to one client, round-robin.

    A client's indices are ascending. Raises ValueError when there are fewer distinct
    sources than clients, since some client would then get nothing.
    """
    _check_clients(num_clients)
    distinct = sorted(set(sources))
    if order:
        if sorted(order) != distinct:
            raise ValueError(f"order {list(order)} must list each of the sources {distinct} once")
        distinct = list(order)
    if len(distinct) < num_clients:
        raise ValueError(
            f"partition_by_source needs at least {num_clients} distinct sources for "
            f"{num_clients} clients, got {len(distinct)}"
        )
    client_of = {source: i % num_clients for i, source in enumerate(distinct)}
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for index, source in enumerate(sources):
        parts[client_of[source]].append(index)
    return parts


def _dirichlet_draw(
    rng: np.random.Generator, labels: Sequence[str], num_clients: int, alpha: float
) -> list[list[int]]:
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    by_label: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(label, []).append(index)
    for label in sorted(by_label):
        indices = rng.permutation(by_label[label])
        shares = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(indices)).astype(int)
        for client, chunk in enumerate(np.split(indices, cuts)):
            parts[client].extend(int(i) for i in chunk)
    return [sorted(part) for part in parts]


def partition_dirichlet(
    labels: Sequence[str], num_clients: int, alpha: float, seed: int, min_size: int = 1
) -> list[list[int]]:
    """Label-skewed split: each label's items are divided by Dirichlet(alpha) shares.

    Small ``alpha`` concentrates each label on few clients; large ``alpha`` approaches an
    even mix. All shares are redrawn until every client has at least ``min_size`` items,
    at most DIRICHLET_MAX_TRIES times. A client's indices are ascending.
    """
    _check_clients(num_clients)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if len(labels) < num_clients * min_size:
        raise ValueError(
            f"cannot give {num_clients} clients {min_size} items each from {len(labels)} items"
        )
    rng = np.random.default_rng(seed)
    for _ in range(DIRICHLET_MAX_TRIES):
        parts = _dirichlet_draw(rng, labels, num_clients, alpha)
        if min(len(part) for part in parts) >= min_size:
            return parts
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) split gave all {num_clients} clients >= {min_size} "
        f"items in {DIRICHLET_MAX_TRIES} tries; raise alpha or lower min_size"
    )
