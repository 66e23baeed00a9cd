"""The canaries as the audits see them: by id, and cut into the attacker's prefix and the
secret exactly as they were trained. Built once per config (the data is a pure function of
it) and shared by the extraction and canary-loss-gap audits."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from attacks.extraction import ExtractionTarget
    from fedmem.config import Config
    from fedmem.data.canaries import Canary


def canaries_by_id(config: Config) -> dict[str, Canary]:
    from fedmem.data.federated import planted
    from fedmem.models.loading import load_tokenizer

    return {c.canary_id: c for c in planted(config, load_tokenizer).canaries}


@lru_cache(maxsize=16)
def canary_targets(config: Config, prefix_tokens: int) -> tuple[ExtractionTarget, ...]:
    """Each canary's last `prefix_tokens` header tokens and its first `attack.suffix_tokens`
    secret tokens, cut from the tokenization of the whole record."""
    from attacks.extraction import split_record
    from fedmem.data.federated import planted
    from fedmem.models.loading import load_tokenizer

    tokenizer = load_tokenizer(config)
    return tuple(
        split_record(
            tokenizer, c.canary_id, c.text, c.split, prefix_tokens, config.attack.suffix_tokens
        )
        for c in planted(config, load_tokenizer).canaries
    )
