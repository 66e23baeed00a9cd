"""benchmarks/RESULTS.md: each benchmark appends its run at the end of its own section."""

from __future__ import annotations

from pathlib import Path

from fedmem.files import atomic_write_text


def append_to_section(results: Path, heading: str, intro: str, text: str) -> None:
    """Insert `text` at the end of the section under `heading` (before the next "## "
    heading), creating the section with `intro` at the end of the file when missing."""
    existing = results.read_text() if results.exists() else "# Benchmarks\n"
    if heading not in existing:
        existing = existing.rstrip("\n") + f"\n\n{heading}\n\n{intro}\n"
    head, _, tail = existing.partition(heading)
    body, sep, rest = tail.partition("\n## ")
    updated = head + heading + body.rstrip("\n") + "\n\n" + text + (sep + rest if sep else "")
    atomic_write_text(results, updated)
