"""Where long work says how far it has got: one step counter any layer may advance, one
listener the driver attaches (fedmem.runs.progress draws it as a bar with the time left).

The work that reports here: building the tiny Llama's base (`fedmem prepare`, warm-start
steps), each round's fit stage at the server (clients done of clients sampled: the replies
reach the server one by one in server.rounds.WatchingGrid) and each round's audits, one step
per audit. A step is `(task, done, total, detail)`, e.g. ("round 3: clients (fit)", 2, 4, "")
or ("audits (global model)", 1, 5, "membership"): the detail says what runs now. With no
listener attached a step costs a function call; nothing here prints. The ServerApp runs in
another thread than the driver in a simulation, so the listener is module state, not a
context variable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Listener = Callable[[str, int, int, str], None]

_lock = threading.Lock()
_listeners: list[Listener] = []


def step(task: str, done: int, total: int, detail: str = "") -> None:
    """`done` of `total` units of `task` are finished; `detail`: the unit running now."""
    with _lock:
        listener = _listeners[-1] if _listeners else None
    if listener is not None:
        listener(task, done, total, detail)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send every step to `listener` while the block runs (the innermost listener wins)."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)
