"""`make secagg-attack`: recover a client's update from Flower's SecAgg+ by brute-forcing one
32-bit pairwise mask seed (`attacks.secagg_seed`), on a reduced seed space.

One SecAgg+ round of three clients runs through Flower 1.41's own client stages
(`secaggplus_mod`'s setup, share_keys, collect_masked_vectors, unmask: real ECDH keys,
Shamir shares, quantization, masks), with fedmem's `[secagg]` defaults (clipping_range 8.0,
quantization_range 2**22, modulus 2**32, every client a neighbour of every other, threshold
2 of 3). Each client's update is shaped like the quickstart's LoRA state (rank 16 on the
7 projections of the tiny Llama's 4 layers: 56 matrices, 278,528 values; synthetic values).
Client d drops after the key shares (fedmem's `secagg.drop_client`, stage
collect_masked_vectors); the server unmasks as Flower's `unmask_stage` does, from the
survivors' shares: u's and w's private-mask seeds and d's secret key, hence s_ud and s_wd.
Only fold(s_uw) is unknown. The experiment hands the attacker all but the `--bits` lowest of
that seed's 28 reachable bits and searches the rest (2**20 by default) exhaustively, then
unmasks u and w with the seed found. Nothing in fedmem's runtime is patched.

The table is printed and appended under "SecAgg+ 32-bit mask seeds (make secagg-attack)" in
benchmarks/RESULTS.md (`--no-append` to skip).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.client.mod.secure_aggregation.secaggplus_mod import (
    SecAggPlusState,
    _collect_masked_vectors,
    _setup,
    _share_keys,
    _unmask,
)
from flwr.common import bytes_to_ndarray, ndarrays_to_parameters
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_combine,
    parameters_multiply,
)
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_constants import Key
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key
from numpy.typing import NDArray

from attacks.secagg_seed import (
    ENGINES,
    Quantization,
    Recovery,
    SeedSpace,
    ServerView,
    dequantized_update,
    fold_seed,
    log2_false_positive_rate,
    reduced_space,
    search,
    unmask_with_seed,
)
from benchmarks.results_file import append_to_section

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
HEADING = "## SecAgg+ 32-bit mask seeds (make secagg-attack)"
SECTION_INTRO = (
    "Appended by `make secagg-attack` (benchmarks/secagg_seed.py; setup in its docstring, "
    "threat model in docs/threat-model-secagg.md). Projections multiply the measured time "
    "per candidate by the space size, one core, worst case (the whole space)."
)

Floats32 = NDArray[np.float32]
Ints = NDArray[np.int64]

# The quickstart's tiny Llama (configs/quickstart.toml [model], fedmem.config defaults)
# with fedmem's LoRA defaults: rank 16 on q, k, v, o, gate, up and down.
HIDDEN, INTERMEDIATE, LAYERS, RANK = 256, 512, 4, 16
PROJECTIONS = {
    "q_proj": (HIDDEN, HIDDEN),
    "k_proj": (HIDDEN, HIDDEN),
    "v_proj": (HIDDEN, HIDDEN),
    "o_proj": (HIDDEN, HIDDEN),
    "gate_proj": (HIDDEN, INTERMEDIATE),
    "up_proj": (HIDDEN, INTERMEDIATE),
    "down_proj": (INTERMEDIATE, HIDDEN),
}


def lora_update(rng: np.random.Generator, layers: int = LAYERS) -> list[Floats32]:
    """A LoRA state's shapes and scales: A ~ U(+-1/sqrt(in)), B small around 0."""
    arrays: list[Floats32] = []
    for _ in range(layers):
        for fan_in, fan_out in PROJECTIONS.values():
            bound = 1.0 / np.sqrt(fan_in)
            arrays.append(rng.uniform(-bound, bound, (RANK, fan_in)).astype(np.float32))
            arrays.append(rng.normal(0.0, 1e-3, (fan_out, RANK)).astype(np.float32))
    return arrays


@dataclass(frozen=True)
class Round:
    """One SecAgg+ round with a dropped client, as the server ends it."""

    views: dict[int, ServerView]  # per survivor: upload, learned seeds, the unknown neighbour
    quantized: dict[int, list[Ints]]  # per survivor: x_u as the client formed it (the truth)
    pairwise_seed: int  # fold(s_uw), the truth the attack searches for


def _setup_config(q: Quantization, clients: int, max_weight: float) -> dict[str, object]:
    return {
        Key.SAMPLE_NUMBER: clients,
        Key.SHARE_NUMBER: clients,
        Key.THRESHOLD: clients - 1,
        Key.CLIPPING_RANGE: q.clipping_range,
        Key.TARGET_RANGE: q.target_range,
        Key.MOD_RANGE: q.mod_range,
        Key.MAX_WEIGHT: max_weight,
    }


def client_quantized(
    update: list[Floats32], num_examples: int, max_weight: float, q: Quantization
) -> list[Ints]:
    """x_u as `_collect_masked_vectors` forms it (same global numpy seed, same rounding)."""
    q_ratio = round(num_examples / max_weight * q.target_range)
    scaled = parameters_multiply(update, q_ratio / q.target_range)
    return factor_combine(q_ratio, quantize(scaled, q.clipping_range, q.target_range))


def _share_keys_all(states: dict[int, SecAggPlusState]) -> dict[int, dict[str, list]]:
    """Run share_keys on every client; the server forwards each ciphertext to its target."""
    keys = {str(nid): (s.pk1, s.pk2) for nid, s in states.items()}
    forward: dict[int, dict[str, list]] = {
        nid: {Key.CIPHERTEXT_LIST: [], Key.SOURCE_LIST: []} for nid in states
    }
    for nid, state in states.items():
        out = _share_keys(state, dict(keys))
        for dst, ciphertext in zip(
            out[Key.DESTINATION_LIST], out[Key.CIPHERTEXT_LIST], strict=True
        ):
            forward[dst][Key.CIPHERTEXT_LIST].append(ciphertext)
            forward[dst][Key.SOURCE_LIST].append(nid)
    return forward


def _collected_shares(
    states: dict[int, SecAggPlusState], survivors: list[int], dropped: int
) -> dict[int, bytes]:
    """The unmask stage: survivors send shares; the server combines them per owner."""
    shares: dict[int, list[bytes]] = {nid: [] for nid in states}
    for nid in survivors:
        out = _unmask(
            states[nid], {Key.ACTIVE_NODE_ID_LIST: survivors, Key.DEAD_NODE_ID_LIST: [dropped]}
        )
        for owner, share in zip(out[Key.NODE_ID_LIST], out[Key.SHARE_LIST], strict=True):
            shares[owner].append(share)
    return {owner: combine_shares(s) for owner, s in shares.items()}


def run_round(
    updates: dict[int, list[Floats32]],
    num_examples: dict[int, int],
    dropped: int,
    q: Quantization,
    seed: int = 0,
) -> Round:
    """Three clients through Flower's SecAgg+ client stages; `dropped` fails after share_keys,
    so each survivor's one unknown pairwise key is the one it shares with the other."""
    if len(updates) != 3:
        raise ValueError(f"{len(updates)} clients: the experiment has 3 (one drops)")
    max_weight = float(max(num_examples.values()))
    config = _setup_config(q, len(updates), max_weight)
    states = {nid: SecAggPlusState(current_stage="setup", nid=nid) for nid in updates}
    for state in states.values():
        _setup(state, dict(config))
    forward = _share_keys_all(states)
    survivors = [nid for nid in updates if nid != dropped]
    uploads: dict[int, list[Ints]] = {}
    quantized: dict[int, list[Ints]] = {}
    for i, nid in enumerate(survivors):
        params = ndarrays_to_parameters(updates[nid])
        np.random.seed(seed + i)  # quantize's stochastic rounding draws from numpy's global
        out = _collect_masked_vectors(states[nid], forward[nid], num_examples[nid], params)
        uploads[nid] = [bytes_to_ndarray(b) for b in out[Key.MASKED_PARAMETERS]]
        np.random.seed(seed + i)
        quantized[nid] = client_quantized(updates[nid], num_examples[nid], max_weight, q)
    secrets = _collected_shares(states, survivors, dropped)
    dropped_sk1 = bytes_to_private_key(secrets[dropped])
    views = {}
    for nid in survivors:
        (other,) = [v for v in survivors if v != nid]
        learned = generate_shared_key(dropped_sk1, bytes_to_public_key(states[nid].pk1))
        views[nid] = ServerView(uploads[nid], nid, secrets[nid], {dropped: learned}, other, q)
    u, w = survivors
    s_uw = generate_shared_key(
        bytes_to_private_key(states[u].sk1), bytes_to_public_key(states[w].pk1)
    )
    return Round(views, quantized, fold_seed(s_uw))


def max_abs_error(a: list[NDArray], b: list[NDArray]) -> float:
    return max(float(np.abs(x.astype(np.float64) - y).max()) for x, y in zip(a, b, strict=True))


def same(a: list[Ints], b: list[Ints]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@dataclass(frozen=True)
class EngineRun:
    """One engine's search over the space, and what the seed it found unmasks."""

    recovery: Recovery
    exact: dict[int, bool]  # per survivor: recovered x equals the client's, value for value
    errors: dict[int, float]  # per survivor: max |recovered - true float update|


@dataclass(frozen=True)
class Outcome:
    runs: dict[str, EngineRun]  # per engine
    true_seed: int
    searched: int  # u, whose upload the search tests
    partner: int  # w, unmasked with the same seed
    values: int
    bounds: dict[int, float]  # per survivor: one quantum / (num_examples / max_weight)

    @property
    def ok(self) -> bool:
        return all(
            r.recovery.seed == self.true_seed and len(r.exact) == 2 and all(r.exact.values())
            for r in self.runs.values()
        )


def _engine_run(
    rnd: Round,
    updates: dict[int, list[Floats32]],
    space: SeedSpace,
    screen_values: int,
    engine: str,
    survivors: tuple[int, int],
) -> EngineRun:
    u, w = survivors
    recovery = search(rnd.views[u], space, screen_values, engine)
    recovered = {u: recovery.quantized}
    if recovery.seed is not None:
        recovered[w] = unmask_with_seed(rnd.views[w], recovery.seed)
    exact, errors = {}, {}
    for nid, x in recovered.items():
        exact[nid] = x is not None and same(x, rnd.quantized[nid])
        q = rnd.views[nid].quantization
        errors[nid] = max_abs_error(updates[nid], dequantized_update(x, q)) if x else math.nan
    return EngineRun(recovery, exact, errors)


def run(bits: int, screen_values: int, engines: list[str], seed: int = 0) -> Outcome:
    rng = np.random.default_rng(seed)
    node_ids = [int(x) for x in rng.integers(1, 2**63, size=3)]
    updates = {nid: lora_update(rng) for nid in node_ids}
    num_examples = dict(zip(node_ids, (100, 120, 90), strict=True))
    q = Quantization()
    rnd = run_round(updates, num_examples, node_ids[2], q, seed)
    u, w = node_ids[:2]
    space = reduced_space(rnd.pairwise_seed, bits)
    runs = {e: _engine_run(rnd, updates, space, screen_values, e, (u, w)) for e in engines}
    quantum = 2 * q.clipping_range / q.target_range
    max_weight = max(num_examples.values())
    bounds = {nid: quantum * max_weight / num_examples[nid] for nid in (u, w)}
    values = sum(a.size for a in updates[u])
    return Outcome(runs, rnd.pairwise_seed, u, w, values, bounds)


def core_hours(us_per_candidate: float, bits: int) -> float:
    return us_per_candidate * 2**bits / 1e6 / 3600


def _engine_column(outcome: Outcome, run: EngineRun) -> list[str]:
    r = run.recovery
    us = r.cpu_us_per_candidate
    cells = [
        f"{r.cpu_seconds:.1f} / {r.seconds:.1f}",
        f"{us:.2f} / {r.us_per_candidate:.2f}",
        f"{r.screen_hits} / {r.confirmed}",
        str(r.seed == outcome.true_seed),
    ]
    for nid in (outcome.searched, outcome.partner):
        if nid in run.exact:
            error, bound = run.errors[nid], outcome.bounds[nid]
            cells.append(f"{run.exact[nid]} / {error:.2e} (bound {bound:.2e})")
        else:
            cells.append("not recovered")
    cells += [f"{core_hours(us, 28):.2f}", f"{core_hours(us, 32):.2f}"]
    return cells


MEASURES = (
    "search seconds, CPU / wall",
    "µs per candidate, CPU / wall",
    "candidates passing the screen / the full check",
    "seed found = true seed",
    "u (searched): quantized update identical / max abs error",
    "w (unmasked with the same seed): identical / max abs error",
    "projected 2^28 seeds (every fold of a base64 key), core-hours",
    "projected 2^32 seeds (any 32-bit seed), core-hours",
)


def table(outcome: Outcome, bits: int, screen_values: int) -> str:
    engines = list(outcome.runs)
    columns = [_engine_column(outcome, outcome.runs[e]) for e in engines]
    lines = [
        "| measure | " + " | ".join(f"engine `{e}`" for e in engines) + " |",
        "|---|" + "---|" * len(engines),
    ]
    for i, measure in enumerate(MEASURES):
        lines.append(f"| {measure} | " + " | ".join(c[i] for c in columns) + " |")
    log2_fp = log2_false_positive_rate(Quantization(), screen_values)
    facts = (
        f"Space: 2^{bits} = {2**bits:,} seeds, searched exhaustively by each engine (one "
        f"process); update: {outcome.values:,} values; screen: {screen_values} values, "
        f"false-positive rate 2^{log2_fp:.0f} per candidate. Projections use CPU time."
    )
    return facts + "\n\n" + "\n".join(lines) + "\n"


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.processor() or platform.machine()}, "
        f"load average {load[0]:.1f} at the end, shared with other jobs; "
        f"numpy {np.__version__}"
    )


def append_results(text: str) -> None:
    append_to_section(RESULTS, HEADING, SECTION_INTRO, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=20, help="free seed bits searched")
    parser.add_argument("--screen-values", type=int, default=64)
    parser.add_argument(
        "--engine", choices=ENGINES, action="append", help="default: each of them, in turn"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args(argv)
    outcome = run(args.bits, args.screen_values, args.engine or list(ENGINES), args.seed)
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = f"### {date}, {os.cpu_count()} CPU cores\n\n{machine()}.\n\n" + table(
        outcome, args.bits, args.screen_values
    )
    print(text)
    if not args.no_append:
        append_results(text)
        print(f"appended to {RESULTS}")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
