"""The run folder's log file, `run.log`: where the libraries' own messages go, so that the
terminal shows fedmem's output alone.

A DP-SGD run would otherwise interleave opacus' warnings ("Secure RNG turned off", "Full
backward hook is firing"), Ray's forwarded actor lines and Flower's ("Manually terminating
ClientAppActor") with the round lines. While a run records, Python warnings (opacus',
torch's, transformers') and Flower's log records are written to `run.log` instead of the
terminal (Flower's errors still show there too), in the driver (`to_run_log`) and in each
simulation actor (`attach`, from the ClientApp; Ray no longer forwards actor output:
fedmem.drivers.simulation). What a user needs from them is said once in fedmem's words
(`notices`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedmem.config import Config

LOG_FILE = "run.log"
LOGGERS = ("py.warnings", "flwr")  # Python warnings (logging.captureWarnings), Flower
FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"

_lock = threading.Lock()
_attached: dict[Path, logging.Handler] = {}  # this process's permanent handlers (actors)


def _handler(run_dir: Path, mode: str = "a") -> logging.Handler:
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / LOG_FILE, mode=mode, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler


def _route(handler: logging.Handler) -> list:
    """Send LOGGERS to `handler`; Flower's own handlers keep its errors only (what went wrong
    stays on the terminal). Returns what to restore."""
    saved = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        kept = [h for h in logger.handlers if name == "flwr"]
        saved.append((logger, list(logger.handlers), logger.propagate,
                      [(h, h.level) for h in kept]))
        for h in kept:
            h.setLevel(max(h.level, logging.ERROR))
        logger.handlers = [*kept, handler]
        logger.propagate = False
    return saved


def _restore(saved: list) -> None:
    for logger, handlers, propagate, levels in saved:
        logger.handlers, logger.propagate = handlers, propagate
        for h, level in levels:
            h.setLevel(level)


@contextmanager
def to_run_log(run_dir: Path, resume: bool = False) -> Iterator[Path]:
    """While the block runs, warnings and Flower's log records go to `run_dir`/run.log (a
    fresh run starts it anew, a resumed one appends)."""
    handler = _handler(Path(run_dir), "a" if resume else "w")
    logging.captureWarnings(True)
    saved = _route(handler)
    try:
        yield Path(run_dir) / LOG_FILE
    finally:
        _restore(saved)
        logging.captureWarnings(False)
        handler.close()


def attach(run_dir: Path) -> None:
    """In a process that only serves one run at a time (a simulation's client actor): from
    now on warnings and Flower's records go to `run_dir`/run.log."""
    run_dir = Path(run_dir).resolve()
    with _lock:
        if run_dir in _attached:
            return
        for handler in _attached.values():
            handler.close()
        _attached.clear()
        _attached[run_dir] = _handler(run_dir)
        logging.captureWarnings(True)
        _route(_attached[run_dir])


def notices(config: Config) -> list[str]:
    """What the libraries' warnings mean for this run, once, in fedmem's words."""
    lines = []
    if config.dp_sgd.enabled:
        lines.append("DP-SGD: opacus' secure RNG is off (reproducible noise for a simulation; "
                     "not for a deployment). Library warnings go to the run folder's "
                     f"{LOG_FILE}.")
    return lines
