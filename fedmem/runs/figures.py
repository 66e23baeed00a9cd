"""The report's figures, drawn with matplotlib (Agg) from results-store DataFrames.

Each function takes the tidy frames `fedmem.runs.report_files` builds from the store and returns a
matplotlib Figure; none reads files. Combinations get one colour each across every figure;
full fine-tuning is drawn solid, LoRA dashed.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

LINESTYLE = {"full": "-", "lora": "--"}


def colours(combinations: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10" if len(combinations) <= 10 else "tab20")
    return {c: cmap(i % cmap.N) for i, c in enumerate(combinations)}


def _percent_axis(ax) -> None:
    """0-100 % scale, with room for error bars and at least 0-10 % visible."""
    ax.set_ylim(-3, min(max(ax.get_ylim()[1], 10.0), 103))


def extraction_vs_round(rounds: pd.DataFrame, style: pd.DataFrame) -> Figure:
    """Exact extraction of injected canaries per round, mean over seeds (band: +-1 std).

    `rounds`: run_id, combination, round, exact_rate; `style`: combination -> finetuning."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colour = colours(list(style.index))
    for combination, group in rounds.groupby("combination", sort=False):
        stats = group.groupby("round")["exact_rate"].agg(["mean", "std"]).fillna(0.0) * 100
        ax.plot(stats.index, stats["mean"], LINESTYLE.get(style.loc[combination, "finetuning"],
                "-"), marker="o", ms=3, color=colour[combination], label=combination)
        ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                        color=colour[combination], alpha=0.15, lw=0)
    ax.set_xlabel("round (0 = before fine-tuning)")
    ax.set_ylabel("exact extraction, injected canaries (%)")
    _percent_axis(ax)
    ax.set_title("Extraction rate by round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def extraction_vs_replicas(by_replicas: pd.DataFrame, style: pd.DataFrame) -> Figure:
    """Final-round exact extraction by replica count (0 = never-injected twins).

    `by_replicas`: combination, replicas, mean, std (in %)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colour = colours(list(style.index))
    counts = sorted(by_replicas["replicas"].unique())
    position = {r: i for i, r in enumerate(counts)}
    for combination, group in by_replicas.groupby("combination", sort=False):
        group = group.sort_values("replicas")
        x = [position[r] for r in group["replicas"]]
        ax.errorbar(x, group["mean"], yerr=group["std"].fillna(0.0), capsize=3, marker="o",
                    ms=4, ls=LINESTYLE.get(style.loc[combination, "finetuning"], "-"),
                    color=colour[combination], label=combination)
    ax.set_xticks(range(len(counts)), [("0 (twins)" if r == 0 else f"{r}x") for r in counts])
    ax.set_xlabel("copies of each canary in the training data")
    ax.set_ylabel("exact extraction, final round (%)")
    _percent_axis(ax)
    ax.set_title("Extraction rate by replica count (solid: full, dashed: LoRA)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.Series:
    """True where no other point is at least as good on both (lower) and better on one."""
    flags = []
    for i, p in points.iterrows():
        others = points.drop(index=i)
        dominated = ((others[x] <= p[x]) & (others[y] <= p[y])
                     & ((others[x] < p[x]) | (others[y] < p[y]))).any()
        flags.append(not dominated)
    return pd.Series(flags, index=points.index)


def privacy_utility(table: pd.DataFrame, style: pd.DataFrame, panels: list[tuple[str, str]]
                    ) -> Figure:
    """Privacy (lower is better) against held-out perplexity (lower is better), one point per
    combination (mean over seeds, bars +-1 std); Pareto-optimal combinations are starred.

    `table`: per combination `<key>_mean`, `<key>_std` columns; `panels`: (key, axis label)
    pairs for the privacy axis, e.g. exact extraction and, when present, MIA AUC."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4), squeeze=False)
    colour = colours(list(style.index))
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        points = table[["heldout_perplexity_mean", f"{key}_mean"]].dropna()
        front = pareto_front(points, "heldout_perplexity_mean", f"{key}_mean")
        for combination, row in table.loc[points.index].iterrows():
            ax.errorbar(row["heldout_perplexity_mean"], row[f"{key}_mean"],
                        xerr=row.get("heldout_perplexity_std") or 0.0,
                        yerr=row.get(f"{key}_std") or 0.0, fmt="*" if front[combination] else "o",
                        ms=13 if front[combination] else 6, capsize=3, color=colour[combination],
                        label=combination + (" (Pareto)" if front[combination] else ""))
        best = points[front].sort_values("heldout_perplexity_mean")
        ax.step(best["heldout_perplexity_mean"], best[f"{key}_mean"], where="post", color="k",
                lw=0.8, alpha=0.5)
        ax.set_xlabel("held-out perplexity, final round (lower = more useful)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Privacy-utility frontier (stars: Pareto-optimal combinations)")
    fig.tight_layout()
    return fig


def mia_roc(curves: pd.DataFrame, style: pd.DataFrame) -> Figure:
    """ROC curves of the membership-inference scores at the final audited round, one panel per
    score, one line per combination (its lowest seed). `curves`: combination, curve, fpr, tpr."""
    names = sorted(curves["curve"].unique())[:6]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.2), squeeze=False)
    colour = colours(list(style.index))
    for ax, name in zip(axes[0], names, strict=True):
        for combination, group in curves[curves.curve == name].groupby("combination", sort=False):
            group = group.sort_values("point")
            ax.plot(group["fpr"], group["tpr"], LINESTYLE.get(
                style.loc[combination, "finetuning"], "-"), color=colour[combination],
                label=combination)
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=6, loc="lower right")
    fig.suptitle("Membership inference ROC, final round")
    fig.tight_layout()
    return fig


def exposure_distribution(exposure: pd.DataFrame, style: pd.DataFrame) -> Figure:
    """Exposure (bits) of each canary at the final round, by replica count, per combination.
    `exposure`: combination, replicas, exposure."""
    combinations = [c for c in style.index if c in set(exposure["combination"])]
    counts = sorted(exposure["replicas"].dropna().unique())
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(counts) * len(combinations) / 2), 4.2))
    colour = colours(list(style.index))
    width = 0.8 / max(len(combinations), 1)
    for j, combination in enumerate(combinations):
        data = exposure[exposure.combination == combination]
        values = [data[data.replicas == r]["exposure"].to_numpy() for r in counts]
        box = ax.boxplot(values, positions=[i + (j - (len(combinations) - 1) / 2) * width
                                            for i in range(len(counts))],
                         widths=width * 0.9, patch_artist=True, manage_ticks=False)
        for patch in box["boxes"]:
            patch.set_facecolor(colour[combination])
            patch.set_alpha(0.6)
        ax.plot([], [], "s", color=colour[combination], label=combination)
    ax.set_xticks(range(len(counts)), [("0 (twins)" if r == 0 else f"{int(r)}x") for r in counts])
    ax.set_xlabel("copies of each canary in the training data")
    ax.set_ylabel("exposure (bits)")
    ax.set_title("Exposure distribution, final round")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig
