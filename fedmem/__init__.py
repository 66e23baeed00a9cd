"""fedmem: federated fine-tuning of language models, audited for memorization.

The public API is `fedmem.api` (docs/api.md); its names are reachable from here as well
(`fedmem.run`, `fedmem.load_config`, ...), imported on first use, so `import fedmem` stays
light: no torch, Flower or Ray until a run starts.
"""

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    api = importlib.import_module("fedmem.api")  # not `from fedmem import api`: it recurses
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'fedmem' has no attribute {name!r}")
