"""The one local fit: a client's local training with every mitigation that acts on it.

The client app (each round), the centralized baseline (each epoch) and `make bench` all call
`local_fit`, so the baseline and the benchmark train exactly as a client does. It asks the
registry for the training label mask (Goldfish), the step variant (DP-SGD, resumed from the
trainer's saved history) and the training-only hooks (NEFTune, on for this call only), and
runs the one training loop, `fedmem.training.train_local`.

torch is imported inside `local_fit`: the registry imports every module of this package.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedmem.config import Config, TrainingConfig
from fedmem.mitigations import registry

if TYPE_CHECKING:
    import torch

    from fedmem.mitigations.registry import StepPlan
    from fedmem.training import TrainResult, VariantFactory


@dataclass(frozen=True)
class LocalFit:
    result: TrainResult
    plan: StepPlan | None  # the step variant's run-long state (DP-SGD: PrivateTraining)

    def metrics(self) -> dict[str, bool | float | int]:
        """The step variant's fit metrics (DP-SGD: epsilon so far, ...); empty without one."""
        return self.plan.metrics() if self.plan else {}

    def history(self) -> dict[str, list] | None:
        """What this trainer's next local fit resumes from (DP-SGD: the accountant's
        history); None without a step variant."""
        return self.plan.history() if self.plan else None


def local_fit(
    config: Config,
    model: torch.nn.Module,
    rows: Sequence[list[int]],
    prompt_lengths: Sequence[int] | None,
    pad_id: int,
    seed: int,
    history: Mapping[str, Any] | None = None,
    *,
    trainer: int = 0,
    training: TrainingConfig | None = None,
    wrap_variant: Callable[[VariantFactory], VariantFactory] | None = None,
) -> LocalFit:
    """Train `model` in place on `rows` (encoded, with their prompt lengths under
    answer-only loss) with the configured mitigations, resuming the step variant's
    `history` (None: the trainer's first fit). `trainer` is the client (0 when centralized):
    DP-SGD inserts the gradient canaries that trainer owns.

    `training` replaces `config.training` for this call and `wrap_variant` wraps the step
    variant's factory: both for measuring steps (`make bench`), not for runs."""
    from fedmem.training import StepVariant, train_local

    plan = registry.step_plan(config, len(rows), history, trainer)
    variant: VariantFactory = plan.variant if plan else StepVariant
    if wrap_variant is not None:
        variant = wrap_variant(variant)
    label_mask = registry.label_mask(config)
    with registry.training_hooks(config, model, seed):
        result = train_local(
            model,
            rows,
            training or config.training,
            pad_id,
            seed,
            variant,
            label_mask=label_mask,
            prompt_lengths=prompt_lengths,
        )
    return LocalFit(result=result, plan=plan)
