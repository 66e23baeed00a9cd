"""Writing test inputs."""

from __future__ import annotations

import json
from pathlib import Path


def write_toml(path: Path, raw: dict) -> Path:
    """A nested mapping as TOML (top-level values first, then one table per section)."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    for section, table in raw.items():
        if isinstance(table, dict):
            lines.append(f"[{section}]")
            lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
