"""The report's figures, drawn with matplotlib (Agg) from results-store DataFrames.

Each audit declares its figures (fedmem.audits.declaration.Figure): the store rows it draws
and the function that draws them. This module gives them one style across the report (one
colour per combination in every figure; full fine-tuning solid, LoRA dashed) and draws a
declared figure when the runs carry its data. None of it reads files.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure as MatplotlibFigure  # noqa: E402

from fedmem.audits.declaration import Figure, ReportView  # noqa: E402

LINESTYLE = {"full": "-", "lora": "--"}


def colours(combinations: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10" if len(combinations) <= 10 else "tab20")
    return {c: cmap(i % cmap.N) for i, c in enumerate(combinations)}


def draw(figure: Figure, view: ReportView) -> MatplotlibFigure | None:
    """`figure` drawn from the store rows its query returns; None when there are none."""
    rows = figure.query(view)
    if rows is None or len(rows) == 0:
        return None
    return figure.draw(rows, view)
