"""`make dp-canaries`: the gradient-canary DP audit at quickstart size, appended under
"DP audits: gradient canaries (make dp-canaries)" in benchmarks/RESULTS.md.

Every row is one local fit of the quickstart's client 0 (configs/quickstart.toml: its model,
its 158 rows with the audit records, batch 8, Poisson rate 1/20), trained as its only
trainer (`mode = "centralized"`, so it owns all `dp_audit.gradient_canaries`) for one
quickstart round (4 local epochs, 80 DP-SGD steps), audited by
`fedmem.audits.dp.run_audit.GradientCanaryAudit` on the model before and after, exactly as
a run's final round is, by both of its statistics (the final model's change at each canary
coordinate; the sum over every step of the privatized gradient there, all iterates), the
four bounds holding together at 95 %. Rows:

- `no-noise`: DP-SGD at sigma 0 (clipping, no noise): the empirical epsilon the canaries
  give when nothing hides them (goal: at least 3 at 95 %, met by the all-iterates one).
- `intact` / `noise-tenth`: sigma 1 intact, and with `dp_audit.fault = "noise-tenth"`.
- `cost`: the fit with its 1,000 canaries (inserted and their sums recorded every step) and
  the audit's scoring by both statistics against the same fit with
  `gradient_canaries = 0` and no scoring, side by side, `--pairs` times each (default 2),
  alternating, one torch thread (goal: at most 1.2x). jax (the bounds' library) is imported
  before timing: every DP run imports it for its audit records anyway.

`--label` names a row set run from a modified copy (the scratch check of RESULTS.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import time
from pathlib import Path

from benchmarks.results_file import append_to_section

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
HEADING = "## DP audits: gradient canaries (make dp-canaries)"
INTRO = (
    "Dirac gradient canaries (dp_audit.gradient_canaries) on the quickstart's client 0 for\n"
    "one round (benchmarks/dp_canaries.py says how); bounds at 95 % for delta 1e-5, each\n"
    "beside its ceiling (the bound if every guess were right). Under load, read the CPU\n"
    "ratio of the cost row: wall times stretch unevenly between its two sides."
)
QUICKSTART = REPO / "configs" / "quickstart.toml"


def load(out_dir: str, **overrides):
    from fedmem.config import load_config

    sets = [
        "mode=\"centralized\"",
        "federation.rounds=1",
        "dp_sgd.enabled=true",
        f"output.dir={json.dumps(out_dir)}",
        *(f"{k}={json.dumps(v)}" for k, v in overrides.items()),
    ]
    return load_config(QUICKSTART, sets)


def audited_fit(config, audit: bool = True) -> tuple[dict | None, float, float]:
    """(the gradient-canary facts, wall s, CPU s) of client 0's fit under `config`."""
    from clients.app import client_rows
    from fedmem.audits.dp.run_audit import GradientCanaryAudit, flat_state
    from fedmem.mitigations.local_fit import local_fit
    from fedmem.models.loading import build_model, load_tokenizer

    rows, prompts = client_rows(config, 0)
    pad_id = load_tokenizer(config).pad_token_id
    model = build_model(config, seed=config.seed)
    wall, cpu = time.perf_counter(), time.process_time()
    gradient = GradientCanaryAudit(config) if audit else None
    if gradient is not None:
        gradient.observe(0, flat_state(model), None)
    fit = local_fit(config, model, rows, prompts, pad_id, 1)
    facts = None
    if gradient is not None:
        sums = {0: fit.plan.canary_sums()}  # what the trainer's fit metrics carry
        facts = gradient.observe(1, flat_state(model), fit.metrics()["dp_epsilon"], sums)
    return facts, time.perf_counter() - wall, time.process_time() - cpu


STATISTICS = {"final_model": "final model", "all_iterates": "all iterates"}


def audit_rows(name: str, facts: dict, seconds: float) -> list[str]:
    """One table row per statistic; the verdict (one per run, over both) on each."""
    def eps(x: float) -> str:
        return "inf" if x == float("inf") else f"{x:.2f}"

    rows = []
    for key, statistic in STATISTICS.items():
        s = facts[key]
        rows.append(
            f"| {name} | {statistic} | {eps(facts['epsilon_claimed'])} | "
            f"{eps(s['epsilon_one_run'])} ({s['correct_one_run']}/{s['guesses_one_run']})"
            f" / {eps(s['epsilon_ceiling_one_run'])} | "
            f"{eps(s['epsilon_one_run_fdp'])} ({s['correct_one_run_fdp']}/"
            f"{s['guesses_one_run_fdp']}) / {eps(s['epsilon_ceiling_one_run_fdp'])} | "
            f"{s['auroc']:.3f} | {facts['verdict']} | {seconds:.0f} s |"
        )
    return rows


def measure(only: str, label: str, pairs: int = 2, sigma: float = 1.0) -> str:
    import jax_privacy.auditing  # noqa: F401  (imported before any timing; see above)
    import torch

    torch.set_num_threads(1)
    out = tempfile.mkdtemp(prefix="dp-canaries-")
    header = [
        "| row | statistic | claimed eps | one-run bound (right/guesses) / ceiling | f-DP bound "
        "(right/guesses) / ceiling | AUROC | verdict (of the run) | wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines: list[str] = []
    suffix = f" [{label}]" if label else ""
    runs = {
        "no-noise": {"dp_sgd.noise_multiplier": 0.0},
        "intact": {"dp_sgd.noise_multiplier": sigma},
        "noise-tenth": {"dp_sgd.noise_multiplier": sigma, "dp_audit.fault": "noise-tenth"},
    }
    for name, overrides in runs.items():
        if only in ("", name):
            lines.extend(header if not lines else [])
            facts, wall, _ = audited_fit(load(out, **overrides))
            rows = audit_rows(f"{name}, sigma {overrides['dp_sgd.noise_multiplier']:g}"
                              f"{suffix}", facts, wall)
            lines.extend(rows)
            print("\n".join(rows), flush=True)
    if only in ("", "cost"):
        with_, without = [], []
        for _ in range(pairs):  # alternating, so drifting load hits both sides alike
            with_.append(audited_fit(load(out, **{"dp_sgd.noise_multiplier": 1.0}))[1:])
            without.append(audited_fit(
                load(out, **{"dp_sgd.noise_multiplier": 1.0, "dp_audit.gradient_canaries": 0}),
                audit=False,
            )[1:])
        wall = sum(w for w, _ in with_) / sum(w for w, _ in without)
        cpu = sum(c for _, c in with_) / sum(c for _, c in without)
        lines.extend([""] if lines else [])
        lines.append(
            f"Cost{suffix}: fit + audit with 1,000 canaries vs fit without, sigma 1, {pairs} x 2 "
            f"alternating: wall {wall:.3f}x, CPU {cpu:.3f}x (goal <= 1.2x); wall s with "
            f"{[round(w, 1) for w, _ in with_]}, without {[round(w, 1) for w, _ in without]}."
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", choices=["", "no-noise", "intact", "noise-tenth",
                                                       "cost"])
    parser.add_argument("--label", default="", help="names rows run from a modified copy")
    parser.add_argument("--pairs", type=int, default=2, help="cost: fits per side")
    parser.add_argument("--sigma", type=float, default=1.0, help="intact / noise-tenth sigma")
    args = parser.parse_args()
    started = time.time()
    text = measure(args.only, args.label, args.pairs, args.sigma)
    load_avg = "/".join(f"{x:.1f}" for x in __import__("os").getloadavg()[:2])
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    heading = (
        f"### {stamp}, {platform.machine()}, load average {load_avg} at the end, "
        f"{time.time() - started:.0f} s in all"
    )
    append_to_section(RESULTS, HEADING, INTRO, f"{heading}\n\n{text}")
    print(text)


if __name__ == "__main__":
    main()
