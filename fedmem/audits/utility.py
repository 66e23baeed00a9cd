"""Utility: what fine-tuning is for. Held-out loss and perplexity; QA answer match by greedy
generation; multiple-choice accuracy by the likelihood of each option's letter after the
question. Held-out perplexity is the utility axis of the report's privacy-utility frontier.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from fedmem.audits.declaration import (
    Audit,
    AuditPart,
    Column,
    Figure,
    ReportColumn,
    ReportView,
    dig,
    interval_columns,
)
from fedmem.audits.intervals import formatted, rate_ci

if TYPE_CHECKING:
    import torch

    from attacks.extraction import ExtractionTarget
    from fedmem.config import Config

PCT = 100.0


@lru_cache(maxsize=4)
def heldout_rows(config: Config) -> tuple[list[int], ...]:
    from fedmem.data.federated import audited_heldout_texts
    from fedmem.models.loading import load_tokenizer
    from fedmem.training import encode_samples

    tokenizer = load_tokenizer(config)
    texts = audited_heldout_texts(config, load_tokenizer)
    return tuple(encode_samples(tokenizer, texts, config.training.max_seq_len))


@lru_cache(maxsize=4)
def qa_prompts(config: Config) -> tuple[tuple[str, int], ...]:
    """Each held-out pair rendered as training rows are (chat template or plain format), cut
    after its answer, with where the answer starts (fedmem.data.federated.answer_cut)."""
    from fedmem.data.federated import answer_cut, audited_heldout, renderer
    from fedmem.models.loading import load_tokenizer

    render = renderer(config, load_tokenizer)
    return tuple(answer_cut(render, p) for p in audited_heldout(config, load_tokenizer))


@lru_cache(maxsize=4)
def qa_targets(config: Config) -> tuple[ExtractionTarget, ...]:
    """Each held-out pair as (question prompt -> answer tokens), cut as trained."""
    from attacks.extraction import split_record
    from fedmem.models.loading import load_tokenizer

    tokenizer = load_tokenizer(config)
    limit = config.training.max_seq_len
    return tuple(
        split_record(tokenizer, f"q{i}", text, start, limit, limit)
        for i, (text, start) in enumerate(qa_prompts(config))
    )


def audit_utility(config: Config, model: torch.nn.Module) -> AuditPart:
    from attacks.extraction import extract
    from fedmem.data.federated import audited_heldout
    from fedmem.models.loading import load_tokenizer
    from fedmem.training import mean_token_loss

    tokenizer = load_tokenizer(config)
    pad_id = tokenizer.pad_token_id
    loss = mean_token_loss(model, heldout_rows(config), config.training.batch_size, pad_id)
    heldout = audited_heldout(config, load_tokenizer)
    answers = extract(model, qa_targets(config), pad_id, config.attack.batch_size)
    by_source: dict[str, list[bool]] = defaultdict(list)
    for pair, result in zip(heldout, answers, strict=True):
        by_source[pair.source].append(result.exact)
    correct = sum(r.exact for r in answers)
    mcq = [
        _option_pick(model, tokenizer, text[:start], len(p.options)) == p.answer
        for p, (text, start) in zip(heldout, qa_prompts(config), strict=True)
        if p.options
    ]
    return AuditPart(
        {
            "heldout_loss": loss,
            "heldout_perplexity": math.exp(min(loss, 50.0)),
            "utility": {
                "qa_accuracy": correct / max(len(answers), 1),
                "qa_accuracy_ci": rate_ci(correct, len(answers)),
                "qa_n": len(answers),
                "qa_by_source": {k: sum(v) / len(v) for k, v in sorted(by_source.items())},
                "mcq_accuracy": sum(mcq) / len(mcq) if mcq else None,
                "mcq_accuracy_ci": rate_ci(sum(mcq), len(mcq)) if mcq else None,
                "mcq_n": len(mcq),
            },
        }
    )


def _option_pick(model, tokenizer, question: str, n_options: int) -> str:
    from attacks.likelihood import continuation_logprobs
    from fedmem.data.qa import OPTION_LETTERS

    letters = OPTION_LETTERS[:n_options]
    logprobs = continuation_logprobs(model, tokenizer, question, [f" {x}" for x in letters])
    return letters[int(logprobs.argmax())]


# ---------------------------------------------------------------------- the terminal


def details(summary: Mapping) -> list[str]:
    """Held-out loss before -> after, QA answer match and multiple-choice accuracy."""
    final, before = summary["final"], summary["before"]
    u = final.get("utility")
    if "heldout_loss" not in final or not u:
        return []
    mcq = (f"{formatted(u, 'mcq_accuracy', '%')} of {u['mcq_n']}" if u["mcq_n"]
           else "no MCQ held out")
    qa = formatted(u, "qa_accuracy", "%") + (f" of {u['qa_n']}" if "qa_n" in u else "")
    return [
        f"held-out loss {before['heldout_loss']:.3f} -> {final['heldout_loss']:.3f} "
        f"(perplexity {_perplexity(final['heldout_perplexity'])}); held-out QA answer match "
        f"{qa}; multiple choice {mcq}"
    ]


def _perplexity(value: float) -> str:
    """'25.08'; '5.18e+21' for a model destroyed by noise, rather than 22 digits."""
    return f"{value:.2f}" if value < 1e6 else f"{value:.3g}"


# ------------------------------------------------------------------------ the report


def pareto_front(points: Any, x: str, y: str) -> Any:
    """True where no other point is at least as good on both (lower) and better on one."""
    import pandas as pd

    flags = []
    for i, p in points.iterrows():
        others = points.drop(index=i)
        dominated = ((others[x] <= p[x]) & (others[y] <= p[y])
                     & ((others[x] < p[x]) | (others[y] < p[y]))).any()
        flags.append(not dominated)
    return pd.Series(flags, index=points.index)


def frontier_table(view: ReportView) -> Any:
    """Per combination, held-out perplexity and each privacy axis (scaled): mean, std and the
    95 % interval (low, high) of `view.combinations` (over seeds; one seed: the run's own)."""
    table = view.combinations
    if not view.frontier or "heldout_perplexity_mean" not in table:
        return []
    scaled = {f"{key}_{stat}": table[f"{key}_{stat}"] * scale
              for key, _, scale in view.frontier for stat in ("mean", "std", "low", "high")}
    return table.assign(**scaled)


def _spread(row: Any, key: str) -> list[list[float]]:
    """Error bar lengths [[below], [above]] of the interval around the mean; 0 without one."""
    mean, low, high = (row.get(f"{key}_{stat}") for stat in ("mean", "low", "high"))
    if low is None or high is None or low != low or high != high:
        return [[0.0], [0.0]]
    return [[max(mean - low, 0.0)], [max(high - mean, 0.0)]]


def draw_frontier(table: Any, view: ReportView) -> Any:
    """Privacy (lower is better) against held-out perplexity (lower is better), one point per
    combination (mean over seeds, bars: the 95 % interval of `view.combinations`);
    Pareto-optimal combinations are starred,
    one panel per privacy axis (`view.frontier`)."""
    import matplotlib.pyplot as plt

    panels = view.frontier
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4), squeeze=False)
    for ax, (key, label, _) in zip(axes[0], panels, strict=True):
        points = table[["heldout_perplexity_mean", f"{key}_mean"]].dropna()
        front = pareto_front(points, "heldout_perplexity_mean", f"{key}_mean")
        for combination, row in table.loc[points.index].iterrows():
            ax.errorbar(row["heldout_perplexity_mean"], row[f"{key}_mean"],
                        xerr=_spread(row, "heldout_perplexity"), yerr=_spread(row, key),
                        fmt="*" if front[combination] else "o",
                        ms=13 if front[combination] else 6, capsize=3,
                        color=view.colour(combination),
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


def _utility(key: str):
    return lambda row: dig(row, "utility", key)


def _utility_entry(row: Mapping) -> Any:
    return dig(row, "utility")


AUDIT = Audit(
    name="utility",
    order=20,
    # Held-out QA: none for a model audited from outside fedmem (data.source = "texts").
    enabled=lambda config: config.data.source != "texts",
    run=audit_utility,
    before=("heldout_loss", "utility"),
    columns=(
        Column("heldout_loss", lambda row: row.get("heldout_loss"), doc="final round"),
        Column("heldout_perplexity", lambda row: row.get("heldout_perplexity"),
               report=ReportColumn(
                   "held-out ppl", 1.0, 2, bounds=(1.0, math.inf),
                   note="*held-out ppl*: perplexity on QA samples no client trained on "
                   "(utility)")),
        Column("qa_accuracy", _utility("qa_accuracy"), doc="held-out QA answer match (utility)",
               report=ReportColumn(
                   "QA accuracy (%)", PCT, 1, bounds=(0.0, 1.0),
                   note="*QA / MCQ accuracy*: held-out answer match and multiple-choice "
                   "accuracy",
                   absent="QA accuracy (no `utility` in the runs' metrics.jsonl)")),
        *interval_columns("qa_accuracy", _utility_entry, "qa_accuracy",
                          "Clopper-Pearson interval"),
        Column("mcq_accuracy", _utility("mcq_accuracy"),
               doc="held-out multiple choice; NULL when none held out",
               report=ReportColumn(
                   "MCQ accuracy (%)", PCT, 1, bounds=(0.0, 1.0),
                   absent="MCQ accuracy (no multiple-choice question held out)")),
        *interval_columns("mcq_accuracy", _utility_entry, "mcq_accuracy",
                          "Clopper-Pearson interval"),
    ),
    round_line="held-out ppl {heldout_perplexity:.2f}",
    details=details,
    figures=(
        Figure("privacy_utility",
               "Privacy-utility frontier: lower-left is better; stars are Pareto-optimal "
               "combinations; bars: 95 % t-interval over seeds (one seed: the run's own "
               "interval, where its audit records one).",
               frontier_table, draw_frontier),
    ),
)
