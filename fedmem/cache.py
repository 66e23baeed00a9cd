"""Where fedmem caches what it builds once (tokenizer, warm-started base, converted models,
parsed ICD-10 codes): `$FEDMEM_CACHE_DIR`, else `~/.cache/fedmem`."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("FEDMEM_CACHE_DIR", Path.home() / ".cache" / "fedmem"))
