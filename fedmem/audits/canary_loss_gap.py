"""Canary loss gap (attacks/loss_gap.py): the mean per-token loss of the never-injected twins'
secrets minus that of the injected canaries' secrets, in nats, overall and per replica count
(each injected canary against its own twin). Positive: training made the injected secrets
likelier than unseen ones from the same generator. One teacher-forced pass over the canaries,
each scored as trained: its whole header, then its first `attack.suffix_tokens` secret tokens.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedmem.audits.declaration import (
    Audit,
    AuditPart,
    Column,
    ReplicaColumn,
    ReportColumn,
    dig,
    interval_columns,
)
from fedmem.audits.intervals import formatted, mean_ci
from fedmem.audits.populations import canaries_by_id, canary_targets
from fedmem.seeding import LOSS_GAP_BOOTSTRAP, derive_seed

if TYPE_CHECKING:
    import torch

    from fedmem.config import Config


def audit_loss_gap(config: Config, model: torch.nn.Module) -> AuditPart:
    from attacks.loss_gap import secret_losses
    from fedmem.models.loading import load_tokenizer

    # The whole header: no canary header is longer than a training row.
    targets = canary_targets(config, config.training.max_seq_len)
    losses = secret_losses(
        model,
        [t.prefix_ids + t.suffix_ids for t in targets],
        [len(t.prefix_ids) for t in targets],
        load_tokenizer(config).pad_token_id,
        config.training.batch_size,
    )
    loss = {t.canary_id: value for t, value in zip(targets, losses, strict=True)}
    seed = derive_seed(config.seed, LOSS_GAP_BOOTSTRAP)
    return AuditPart({"canary_loss_gap": gap_metrics(loss, canaries_by_id(config), seed)})


def gap_metrics(loss: Mapping[str, float], canaries: Mapping[str, Any], seed: int = 0) -> dict:
    """The gap over all injected canaries and their twins, and per replica count, each with
    `gap_ci`: a percentile bootstrap interval over the (canary, twin) pairs, seeded (None
    below two pairs)."""
    from attacks.loss_gap import loss_gap

    pairs: dict[int, list[tuple[float, float]]] = defaultdict(list)  # replicas -> (in, twin)
    for cid, canary in canaries.items():
        if canary.replicas > 0 and canary.twin_id in loss:
            pairs[canary.replicas].append((loss[cid], loss[canary.twin_id]))

    def summary(group: list[tuple[float, float]]) -> dict:
        injected, twins = [p[0] for p in group], [p[1] for p in group]
        return {
            "n": len(group),
            "injected_loss": sum(injected) / len(injected) if injected else None,
            "twin_loss": sum(twins) / len(twins) if twins else None,
            "gap": loss_gap(injected, twins),
            "gap_ci": mean_ci([t - i for i, t in group], seed),
        }

    every = [p for r in sorted(pairs) for p in pairs[r]]
    return {**summary(every), "by_replicas": {str(r): summary(pairs[r]) for r in sorted(pairs)}}


def _gap_by_replicas(row: Mapping, replicas: str) -> Any:
    """'4.35 [4.01, 4.70]': the group's gap (nats) with its bootstrap interval."""
    return formatted(dig(row, "canary_loss_gap", "by_replicas", replicas), "gap", digits=2)




AUDIT = Audit(
    name="canary_loss_gap",
    order=50,
    enabled=lambda config: True,
    run=audit_loss_gap,
    columns=(
        Column("canary_loss_gap", lambda row: dig(row, "canary_loss_gap", "gap"),
               doc="twins' minus injected canaries' secret loss (nats/token)",
               report=ReportColumn(
                   "canary loss gap (nats)", 1.0, 3, bounds=(-math.inf, math.inf),
                   note="*canary loss gap*: mean per-token loss of the never-injected twins' "
                   "secrets minus the injected canaries' (nats; above 0: the injected secrets "
                   "became likelier)",
                   absent="canary loss gap (no `canary_loss_gap` in the runs' metrics.jsonl)")),
        *interval_columns("canary_loss_gap", lambda row: dig(row, "canary_loss_gap"), "gap",
                          "bootstrap interval (over canary-twin pairs)"),
    ),
    by_replicas=(ReplicaColumn("loss gap, nats [95% CI]", _gap_by_replicas),),
)
