"""Batched extraction against one `generate` per canary, on the same model and canaries.

    python benchmarks/extraction.py [CONFIG] [--set key=value ...] [--repeats N]

Builds the config's base model (cached after the first run) and its canaries' extraction
targets, then times `attacks.extraction.extract` over all targets (left-padded batches of
`attack.batch_size`, one `generate` per batch) against a loop calling `generate` once per
canary, for greedy decoding and each other strategy in `attack.decoding`. Prints a table
with the speed ratio and whether both give the same tokens. The best of `--repeats` runs is
kept. No asserts: it measures, the tests specify.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.table import Table  # noqa: E402

from attacks.extraction import extract  # noqa: E402
from fedmem.audits.extraction import decoding_for, extraction_targets  # noqa: E402
from fedmem.config import load_config  # noqa: E402
from fedmem.models.loading import build_model, load_tokenizer  # noqa: E402
from fedmem.runs.report import console  # noqa: E402


def best_time(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/quickstart.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    model = build_model(config, seed=config.seed).eval()
    pad_id = load_tokenizer(config).pad_token_id
    targets = extraction_targets(config)
    a = config.attack
    table = Table(
        title=(
            f"{config.name}: {config.model.name} ({sum(p.numel() for p in model.parameters()):,}"
            f" parameters), {len(targets)} canaries, prefix <= {a.prefix_tokens} tokens, "
            f"suffix <= {a.suffix_tokens} tokens, batch {a.batch_size}, "
            f"{torch.get_num_threads()} torch threads"
        )
    )
    for col in ("decoding", "one generate per canary (s)", "batched (s)", "ratio", "same tokens"):
        table.add_column(col, justify="right")
    for name in dict.fromkeys(("greedy", *a.decoding)):
        decoding = decoding_for(config, name)
        single_s, single = best_time(
            lambda d=decoding: [extract(model, [t], pad_id, 1, d)[0] for t in targets],
            args.repeats,
        )
        batched_s, batched = best_time(
            lambda d=decoding: extract(model, targets, pad_id, a.batch_size, d), args.repeats
        )
        same = sum(x.generated_ids == y.generated_ids for x, y in zip(single, batched, strict=True))
        cells = (name, f"{single_s:.2f}", f"{batched_s:.2f}", f"{single_s / batched_s:.1f}x")
        table.add_row(*cells, f"{same}/{len(targets)}")
        console.print("  ".join(cells), f"same tokens {same}/{len(targets)}")  # as it goes
    console.print(table)


if __name__ == "__main__":
    main()
