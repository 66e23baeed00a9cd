"""The mitigation registry: every mitigation is one module of `fedmem.mitigations` that
declares, next to its code, a module-level `MITIGATION = Mitigation(...)` saying what it hooks.

The registry imports each public module of the package (names without a leading underscore)
and collects those objects, so a new mitigation is a new module and nothing here changes.
The callers (the client app, its mods, the server app, the local fit, the run recorder, the
store's labels) get these hooks from the registry instead of calling a mitigation's module.

A hook left None is not used. All of them, in the order they act:

  label           the saved config (JSON dict) -> its label in the store and the reports,
                  e.g. "goldfish(k=4,hashed)"; None when off. Read from old run folders too,
                  so it must accept a config without its section.
  label_mask      config -> a training label mask (Goldfish), None when off.
  step_variant    (config, rows, saved history, trainer) -> a `StepPlan`: how the one
                  training loop samples and steps for a whole run of one trainer (DP-SGD;
                  `trainer` is the client, 0 in a centralized run), None when off.
                  At most one mitigation may provide it in a run.
  training_hook   (config, model, seed) -> a context manager active during local training
                  only (NEFTune), None when off.
  client_weight   (config, rows) -> the FedAvg weight a client reports (client DP: 1).
  client_mods     (config, client) -> Flower client mods (SecAgg+, client-side clipping).
  strategy        `StrategyHooks`: wraps the server strategy (client-level DP) and reads
                  the wrapper's round facts and resumable state.
  fit_workflow    config -> the server's fit stage (SecAgg+), None for Flower's default.
                  At most one mitigation may provide it in a run.
  audited_model   (config, model, round) -> a context manager inside which the model is
                  audited (weight noise); it yields facts for the round's metrics row.

Order: mitigations are sorted by `order` (then name). Labels join in that order. Client mods
and strategy wrappers go from the inside out: a later mitigation's mod runs outside an
earlier one's (SecAgg+ masks what client DP has clipped), a later wrapper wraps an earlier
one. Training hooks and audited-model transforms are entered in order.

Importing this module and reading labels imports neither torch, opacus nor flwr (the store
and the reports use labels): a module of this package keeps its top level light and imports
heavy libraries inside its hooks, or keeps a heavy half in a private `_module` that the
registry does not scan.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from fedmem.config import Config, ConfigError

if TYPE_CHECKING:
    import torch
    from flwr.clientapp.typing import Mod
    from flwr.compat.server.typing import Workflow
    from flwr.server.strategy import Strategy

    from fedmem.config import TrainingConfig
    from fedmem.training import LabelMask, StepVariant

PACKAGE = "fedmem.mitigations"


class StepPlan(Protocol):
    """A step variant for a whole run of one trainer (DP-SGD's `PrivateTraining`): built
    from the history saved after the previous local fit, and extended by the next one."""

    def variant(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        n_rows: int,
        cfg: TrainingConfig,
    ) -> StepVariant: ...

    def metrics(self) -> dict[str, bool | float | int]:
        """Fit metrics the client reports (e.g. epsilon so far)."""
        ...

    def history(self) -> dict[str, list]:
        """What the next local fit of this trainer resumes from (JSON-able)."""
        ...


@dataclass(frozen=True)
class StrategyHooks:
    """A server strategy wrapper and what the server reads from it."""

    wrap: Callable[[Config, Strategy], Strategy]  # returns `strategy` itself when off
    round_facts: Callable[[Strategy], dict[str, float] | None]  # for the metrics row
    state: Callable[[Strategy], dict[str, float]]  # what a resumed run needs of it
    restore: Callable[[Strategy, Mapping[str, float]], None]


@dataclass(frozen=True)
class Mitigation:
    name: str  # its config section, e.g. "goldfish"; also the key of its round facts
    order: int  # see the module docstring
    label: Callable[[Mapping[str, Any]], str | None]
    label_mask: Callable[[Config], LabelMask | None] | None = None
    step_variant: (
        Callable[[Config, int, Mapping[str, Any] | None, int], StepPlan | None] | None
    ) = None
    training_hook: (
        Callable[[Config, torch.nn.Module, int], AbstractContextManager[Any] | None] | None
    ) = None
    client_weight: Callable[[Config, int], int] | None = None
    client_mods: Callable[[Config, int], list[Mod]] | None = None
    strategy: StrategyHooks | None = None
    fit_workflow: Callable[[Config], Workflow | None] | None = None
    audited_model: (
        Callable[[Config, torch.nn.Module, int], AbstractContextManager[dict[str, Any]]] | None
    ) = None


# ------------------------------------------------------------------------- discovery


@lru_cache(maxsize=1)
def mitigations() -> tuple[Mitigation, ...]:
    """Every registered mitigation, in order. Cached: `mitigations.cache_clear()` rescans."""
    package = importlib.import_module(PACKAGE)
    found: dict[str, tuple[str, Mitigation]] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_") or info.ispkg or f"{PACKAGE}.{info.name}" == __name__:
            continue
        module = importlib.import_module(f"{PACKAGE}.{info.name}")
        mitigation = getattr(module, "MITIGATION", None)
        if mitigation is None:
            continue
        if not isinstance(mitigation, Mitigation):
            raise TypeError(f"{module.__name__}.MITIGATION is not a Mitigation")
        if mitigation.name in found:
            raise ValueError(
                f"mitigation {mitigation.name!r} is declared by both "
                f"{found[mitigation.name][0]} and {module.__name__}"
            )
        found[mitigation.name] = (module.__name__, mitigation)
    return tuple(sorted((m for _, m in found.values()), key=lambda m: (m.order, m.name)))


def _with(hook: str) -> list[Mitigation]:
    return [m for m in mitigations() if getattr(m, hook) is not None]


# ------------------------------------------------------------------------- labels


def labels(config: Mapping[str, Any]) -> list[str]:
    """The labels of the mitigations a saved config (nested JSON dict) turns on, in order."""
    return [label for m in mitigations() if (label := m.label(config))]


# ------------------------------------------------------------------------- local training


def label_mask(config: Config) -> LabelMask | None:
    """The training label mask: a position stays in the loss when every mask keeps it."""
    masks = [mask for m in _with("label_mask") if (mask := m.label_mask(config))]
    if len(masks) <= 1:
        return masks[0] if masks else None

    def combined(ids: Sequence[int]) -> list[bool]:
        keeps = [mask(ids) for mask in masks]
        return [all(flags) for flags in zip(*keeps, strict=True)]

    return combined


def _only_one(hook: str, made: list[tuple[Mitigation, Any]]) -> Any:
    if len(made) > 1:
        names = " and ".join(f"{m.name}.enabled" for m, _ in made)
        raise ConfigError(f"{names}: both replace the {hook}, turn one of them off")
    return made[0][1] if made else None


def step_plan(
    config: Config, n_rows: int, history: Mapping[str, Any] | None = None, trainer: int = 0
) -> StepPlan | None:
    """The run's step variant for trainer `trainer` (the client; 0 when centralized) of
    `n_rows` rows, resuming `history`; None for the plain loop."""
    made = [
        (m, plan)
        for m in _with("step_variant")
        if (plan := m.step_variant(config, n_rows, history, trainer)) is not None
    ]
    return _only_one("training step", made)


@contextmanager
def training_hooks(config: Config, model: torch.nn.Module, seed: int) -> Iterator[None]:
    """Within the block, every training-only hook is on `model` (entered in order)."""
    with ExitStack() as stack:
        for m in _with("training_hook"):
            hook = m.training_hook(config, model, seed)
            if hook is not None:
                stack.enter_context(hook)
        yield


def client_weight(config: Config, num_examples: int) -> int:
    """The FedAvg weight a client with `num_examples` rows reports."""
    weight = num_examples
    for m in _with("client_weight"):
        weight = m.client_weight(config, weight)
    return weight


# ------------------------------------------------------------------------- federation


def client_mods(config: Config, client: int) -> list[Mod]:
    """The mitigations' client mods, outermost first (a later mitigation's are outer)."""
    return [mod for m in reversed(_with("client_mods")) for mod in m.client_mods(config, client)]


@dataclass
class WrappedStrategy:
    """The server strategy after every wrapper, and each wrapper by mitigation."""

    strategy: Strategy  # the outermost: what the server runs
    layers: list[tuple[Mitigation, Strategy]] = field(default_factory=list)

    def round_facts(self) -> dict[str, dict[str, float]]:
        """Each wrapper's facts of the round (e.g. client_dp: clip norm and noise std),
        keyed by mitigation name."""
        facts = {m.name: m.strategy.round_facts(wrapper) for m, wrapper in self.layers}
        return {name: f for name, f in facts.items() if f}

    def state(self) -> dict[str, float]:
        """What a resumed run needs of the wrappers."""
        out: dict[str, float] = {}
        for m, wrapper in self.layers:
            out.update(m.strategy.state(wrapper))
        return out

    def restore(self, state: Mapping[str, float]) -> None:
        for m, wrapper in self.layers:
            m.strategy.restore(wrapper, state)


def wrap_strategy(config: Config, strategy: Strategy) -> WrappedStrategy:
    """`strategy` wrapped by every mitigation that wraps it (a later one outside)."""
    wrapped = WrappedStrategy(strategy)
    for m in _with("strategy"):
        outer = m.strategy.wrap(config, wrapped.strategy)
        if outer is not wrapped.strategy:
            wrapped.layers.append((m, outer))
            wrapped.strategy = outer
    return wrapped


def fit_workflow(config: Config) -> Workflow:
    """The server's fit stage: a mitigation's (SecAgg+), else Flower's default."""
    made = [(m, w) for m in _with("fit_workflow") if (w := m.fit_workflow(config)) is not None]
    workflow = _only_one("fit workflow", made)
    if workflow is None:
        from flwr.server.workflow.default_workflows import default_fit_workflow

        return default_fit_workflow
    return workflow


# ------------------------------------------------------------------------- audits


@contextmanager
def audited_model(
    config: Config, model: torch.nn.Module, server_round: int
) -> Iterator[dict[str, Any]]:
    """Within the block `model` is what the audit of `server_round` sees (e.g. with weight
    noise); afterwards it is exactly as before. Yields the facts for the metrics row."""
    facts: dict[str, Any] = {}
    with ExitStack() as stack:
        for m in _with("audited_model"):
            facts.update(stack.enter_context(m.audited_model(config, model, server_round)))
        yield facts
