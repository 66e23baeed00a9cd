"""Goldfish loss (Hans et al. 2024, "Be like a Goldfish, Don't Memorize!").

About 1/k of each training row's label positions are set to IGNORE_INDEX, so the model is
never trained to predict those tokens and cannot reproduce a long passage verbatim. HF causal
LMs shift labels inside the loss (the label at position t is predicted from positions < t), so
dropping label position t removes exactly the loss term for predicting token t; the input
token itself still feeds every later prediction.

Only training labels are masked: held-out loss and the extraction audit never see the mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fedmem.config import GoldfishConfig
from fedmem.mitigations.registry import Mitigation

if TYPE_CHECKING:
    from fedmem.training import LabelMask

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1


def context_hash(context: Sequence[int]) -> int:
    """Deterministic 64-bit hash of a tuple of token ids, the same in every process.

    FNV-1a over whole ids, then the splitmix64 finalizer: FNV's low bits depend only on the
    ids' low bits, and the drop decision reads the low bits (mod k), so they must be mixed.
    The context's length enters through the number of FNV rounds.
    """
    h = _FNV_OFFSET
    for token in context:
        h = ((h ^ (token & _MASK64)) * _FNV_PRIME) & _MASK64
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & _MASK64
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & _MASK64
    return h ^ (h >> 31)


def goldfish_mask(ids: Sequence[int], k: int, h: int, variant: str) -> list[bool]:
    """Which label positions of `ids` stay in the loss (True = keep).

    static: positions k-1, 2k-1, ... are dropped (exactly len(ids) // k of them).
    hashed: position t is dropped when the hash of ids[t-h:t] is 0 mod k. The first h
    positions hash the shorter context they have (position 0 the empty one); their label at
    position 0 is never a target anyway, because of the shift.
    """
    if k < 2 or h < 1:
        raise ValueError(f"goldfish_mask: need k >= 2 and h >= 1, got k={k}, h={h}")
    if variant == "static":
        return [(t + 1) % k != 0 for t in range(len(ids))]
    if variant == "hashed":
        return [context_hash(ids[max(0, t - h) : t]) % k != 0 for t in range(len(ids))]
    raise ValueError(f"goldfish_mask: unknown variant {variant!r}")


def goldfish_label_mask(cfg: GoldfishConfig) -> LabelMask | None:
    """The training label mask for this config; None when goldfish is off."""
    if not cfg.enabled:
        return None

    def mask(ids: Sequence[int]) -> list[bool]:
        return goldfish_mask(ids, cfg.k, cfg.h, cfg.variant)

    return mask


def label(config: Mapping[str, Any]) -> str | None:
    g = config.get("goldfish", {})
    return f"goldfish(k={g['k']},{g['variant']})" if g.get("enabled") else None


MITIGATION = Mitigation(
    name="goldfish",
    order=10,
    label=label,
    label_mask=lambda config: goldfish_label_mask(config.goldfish),
)
