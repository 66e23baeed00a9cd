"""The DP audit of a run: the accountant's epsilon beside an empirical lower bound, per round.

Every DP run (DP-SGD or client-level DP) is audited from the same single training run:

- record level: the run's audit records (fedmem.data.audit_records) are scored on each global
  model against the model before fine-tuning; the scores of included vs excluded records give
  one-run lower bounds on epsilon (attacks.dp_audit), set against the smallest epsilon the
  run claims for a record (DP-SGD's largest client epsilon so far; a client-level epsilon
  covers each record of the client too);
- gradient canaries (DP-SGD with `dp_audit.gradient_canaries > 0`): Dirac canaries inserted
  into the clipped sum, scored by their coordinate's change in the final model
  ("final_model") and by the sum over every step of the privatized gradient there, as
  their trainers recorded it ("all_iterates"; absent under SecAgg+);
- client level (federated client DP with `dp_audit.client_canaries > 0`): canary
  clients, inserted by fedmem.audits.dp.canary_clients, are measured by the cosine of their
  direction with the final model's change ("final_model") and with every round's change
  ("all_iterates").

Each round stores its bounds beside the audit's ceiling (its power: the largest bound its
records or canaries could give, every guess right). The verdict is one per run, the final
round's (no correction over rounds is needed, as no earlier round is tested): `VIOLATION`
when a lower bound exceeds the claim, `consistent` when none does and the ceiling exceeds
the claim, `inconclusive` when the claim is at or above the ceiling (the audit could not
have refuted it). The lower bounds a verdict rests on hold jointly with probability
`dp_audit.confidence` (Bonferroni over them: two methods for audit records, two statistics
for canary clients, both, four bounds, for gradient canaries).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from attacks.dp_audit import (
    DiracCanaries,
    attack_auroc,
    canary_direction,
    cosine,
    dirac_canaries,
    dirac_scores,
    gaussian_composition_epsilon,
    gaussian_fit_epsilon,
    gdp_ceiling,
    gdp_lower_bound,
    one_run_bounds,
    one_run_ceilings,
    record_scores,
    token_log_probs,
    verdict,
)
from attacks.statistics import mann_whitney_auc
from fedmem.audits.intervals import auc_ci
from fedmem.config import Config
from fedmem.data.audit_records import audit_enabled
from fedmem.data.federated import planted
from fedmem.mitigations.dp_sgd import canary_trainers
from fedmem.models.loading import get_trainable_state, load_tokenizer, new_token_ids
from fedmem.seeding import DP_CANARY_DIRECTIONS, GRADIENT_CANARIES, derive_seed
from fedmem.training import encode_samples


def secret_masks(rows: list[list[int]], secret_ids: list[int]) -> list[np.ndarray] | None:
    """Per row, which next-token positions predict one of `secret_ids` (None when there are
    no secret ids: every token is scored). A row whose secret was cut off is an error."""
    if not secret_ids:
        return None
    masks = [np.isin(np.asarray(row[1:]), secret_ids) for row in rows]
    if not all(m.sum() == 1 for m in masks):
        raise ValueError("every new-token audit record must hold exactly one new token")
    return masks


def client_canaries_enabled(config: Config) -> bool:
    return (
        config.mode == "federated"
        and config.client_dp.enabled
        and config.dp_audit.client_canaries > 0
    )


def canary_seed(config: Config) -> int:
    return derive_seed(config.seed, DP_CANARY_DIRECTIONS)


def inserted_canaries(config: Config) -> range:
    """Direction indices of the canary clients (the never-inserted ones follow them)."""
    return range(config.dp_audit.client_canaries)


GRADIENT_CANARY_SUMS = "gradient_canary_sums"  # their key in a round's resume state
VERDICT_RULE = "one per run: the final round's bounds against its claim and ceiling"


def run_verdict(
    config: Config, server_round: int, bounds: list[float], claimed: float, ceiling: float
) -> str | None:
    """The run's verdict at its final round; None before it (those rounds are not tested)."""
    if server_round != config.federation.rounds:
        return None
    return verdict(bounds, claimed, ceiling)


def client_epsilon(config: Config, rounds: int) -> float:
    """The client-level epsilon after `rounds` rounds of DP-FedAvg (dp-accounting): each
    round is a Gaussian mechanism of noise multiplier z on the clipped sum, counted as if
    every client took part in every round (sampling could only lower it)."""
    dp = config.client_dp
    return gaussian_composition_epsilon(dp.noise_multiplier, rounds, dp.delta)


def flat_state(model: torch.nn.Module) -> np.ndarray:
    """The trainable state as one float64 vector (the space canary directions live in)."""
    return np.concatenate([a.ravel() for a in get_trainable_state(model)]).astype(np.float64)


class RunDPAudit:
    """Measures each audited global model; holds what later rounds compare against."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # A no-DP run trains on audit records under dp_audit.inject = "always" (to match
        # its DP runs' rows) but has no epsilon to audit.
        data = planted(config, load_tokenizer)
        self.records = data.audit_records if audit_enabled(config) else ()
        self.included = np.array([r.included for r in self.records], dtype=bool)
        self.rows: list[list[int]] = []
        if self.records:
            tokenizer = load_tokenizer(config)
            texts = [r.text for r in self.records]
            self.rows = encode_samples(tokenizer, texts, config.training.max_seq_len)
        # New-token records are scored on their secret, the new token, alone.
        self.secret = secret_masks(self.rows, new_token_ids(config)) if self.rows else None
        self.base_log_probs: list[np.ndarray] | None = None
        self.canaries = ClientCanaryAudit(config) if client_canaries_enabled(config) else None
        self.gradient = GradientCanaryAudit(config) if gradient_canaries_enabled(config) else None

    @property
    def active(self) -> bool:
        return bool(self.records) or self.canaries is not None or self.gradient is not None

    def measure(
        self,
        server_round: int,
        model: torch.nn.Module,
        dp_epsilon_max: float | None,
        canary_sums: Mapping[int, np.ndarray] | None = None,
    ) -> dict | None:
        """The audit facts for `model` as the global model after `server_round` (None at
        round 0, the model before fine-tuning, which is only remembered). `canary_sums`:
        the round's gradient-canary sums per trainer (`GradientCanaryAudit.add_sums`)."""
        if not self.active:
            return None
        facts: dict = {}
        if self.records:
            pad_id = load_tokenizer(self.config).pad_token_id
            log_probs = token_log_probs(model, self.rows, pad_id)
            if server_round == 0:
                self.base_log_probs = log_probs
            else:
                facts["record"] = self._record_level(server_round, log_probs, dp_epsilon_max)
        watched = self.canaries is not None or self.gradient is not None
        state = flat_state(model) if watched else None
        if self.canaries is not None:
            client = self.canaries.observe(server_round, state)
            if client is not None:
                facts["client"] = client
        if self.gradient is not None:
            gradient = self.gradient.observe(server_round, state, dp_epsilon_max, canary_sums)
            if gradient is not None:
                facts["gradient"] = gradient
        return facts or None

    def replay(self, server_round: int, model: torch.nn.Module) -> None:
        """Feed a saved global model back in after a resume, without computing bounds: the
        round-0 log-probs (the LLR reference) and the client canaries' running cosines."""
        if self.records and server_round == 0:
            pad_id = load_tokenizer(self.config).pad_token_id
            self.base_log_probs = token_log_probs(model, self.rows, pad_id)
        if self.canaries is not None:
            self.canaries.observe(server_round, flat_state(model))
        if self.gradient is not None and server_round == 0:
            self.gradient.observe(0, flat_state(model), None)

    def resume_state(self) -> dict:
        """What, besides the saved global models, a resumed audit needs (JSON)."""
        return self.gradient.resume_state() if self.gradient is not None else {}

    def restore(self, state: Mapping) -> None:
        """Takes back `resume_state` (after `replay`)."""
        if self.gradient is not None:
            self.gradient.restore(state)

    def _record_level(
        self, server_round: int, log_probs: list[np.ndarray], dp_epsilon_max: float | None
    ) -> dict:
        cfg = self.config.dp_audit
        claimed, delta, claimed_by = record_claim(self.config, server_round, dp_epsilon_max)
        use_base = cfg.score == "llr" and self.base_log_probs is not None
        scores = record_scores(
            log_probs, self.base_log_probs if use_base else None, self.secret
        )
        in_scores, out_scores = scores[self.included], scores[~self.included]
        facts: dict = {
            "records": len(self.records),
            "included": int(self.included.sum()),
            "score": "llr" if use_base else "loss",
            "record_design": cfg.record_design,
            "epsilon_claimed": claimed,
            "claimed_by": claimed_by,
            "delta": delta,
            "confidence": cfg.confidence,
            "verdict_rule": VERDICT_RULE,
        }
        return one_run_facts(self.config, server_round, in_scores, out_scores, facts)


def one_run_facts(
    config: Config, server_round: int, in_scores: np.ndarray, out_scores: np.ndarray, facts: dict
) -> dict:
    """`facts` (holding the claim) with the one-run bounds of included vs excluded scores by
    both methods, their ceilings, the AUROC and the verdict (final round only)."""
    if not len(in_scores) or not len(out_scores):
        return {**facts, "verdict": "undetermined (every record on one side)"}
    significance = (1 - config.dp_audit.confidence) / 2  # two methods, one joint confidence
    statistic = one_run_statistic(in_scores, out_scores, facts["delta"], significance)
    facts = {**facts, **statistic}
    facts["epsilon_ceiling"] = max(statistic[f"epsilon_ceiling_{m}"] for m in METHODS)
    epsilons = [statistic[f"epsilon_{m}"] for m in METHODS]
    facts["verdict"] = run_verdict(
        config, server_round, epsilons, facts["epsilon_claimed"], facts["epsilon_ceiling"]
    )
    return facts


METHODS = ("one_run", "one_run_fdp")  # the keys `one_run_bounds` returns


def one_run_statistic(
    in_scores: np.ndarray, out_scores: np.ndarray, delta: float, significance: float
) -> dict:
    """One statistic's one-run bounds by both methods (each at `significance`), with the
    guesses each rests on, their ceilings, and the AUROC (Mann-Whitney, with its 95 %
    bootstrap interval; and jax-privacy's hull AUROC)."""
    bounds = one_run_bounds(in_scores, out_scores, delta, significance)
    ceilings = one_run_ceilings(len(in_scores), len(out_scores), delta, significance)
    facts: dict = {}
    for name, bound in bounds.items():
        facts[f"epsilon_{name}"] = bound.epsilon
        facts[f"guesses_{name}"] = bound.guesses
        facts[f"correct_{name}"] = bound.correct
        facts[f"epsilon_ceiling_{name}"] = ceilings[name]
    # Descriptive, beside the bounds: P(an included score > an excluded one), the Mann-Whitney
    # AUROC (0.5 when the two are alike), with its bootstrap interval. jax-privacy's AUROC is
    # the area under the ROC curve's upper hull (an attacker randomizing between thresholds):
    # kept as `auroc_hull`, but it sits above 0.5 for scores that are alike (about 0.59 for
    # 100 vs 100), so it does not say whether the records are separable at all.
    facts["auroc"] = mann_whitney_auc(in_scores, out_scores)
    facts["auroc_ci"] = auc_ci(in_scores, out_scores, seed=0)
    facts["auroc_hull"] = attack_auroc(in_scores, out_scores)
    return facts


def gradient_canaries_enabled(config: Config) -> bool:
    return config.dp_sgd.enabled and config.dp_audit.gradient_canaries > 0


def iterates_unavailable(config: Config) -> str | None:
    """Why the gradient canaries' all-iterates statistic cannot be computed in this run; None
    when it can."""
    if config.mode == "federated" and config.secagg.enabled:
        return (
            "secagg.enabled: the sums are per-client coordinates of each client's privatized "
            "gradients, which SecAgg+ keeps from the server, so clients do not send them"
        )
    return None


class GradientCanaryAudit:
    """White-box record level: the Dirac gradient canaries DP-SGD inserted
    (`fedmem.mitigations.dp_sgd.gradient_canary_plan`), scored two ways, one per threat model:

    - `final_model`: the change of their coordinate in the global model since round 0,
      against their gradient's direction (the released model is all an attacker sees);
    - `all_iterates`: sign x the sum, over every round and local step, of the privatized
      gradient (after the noise, before the optimizer's scaling) at their coordinate, as the
      trainer that owns each canary recorded it (`CANARY_SUMS_METRIC`): the attacker sees
      every noisy step, the release DP-SGD's accountant covers. Absent under SecAgg+
      (`iterates_unavailable`).

    The verdict is one per run over the four bounds (two methods x two statistics), each at a
    quarter of 1 - `dp_audit.confidence` (a half when only the final model is scored)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.seed = derive_seed(config.seed, GRADIENT_CANARIES)
        self.canaries: DiracCanaries | None = None  # drawn once the model's size is known
        self.initial: np.ndarray | None = None  # round 0's values at the canary coordinates
        k = config.dp_audit.gradient_canaries
        trainers = canary_trainers(config)
        # trainer -> indices of its canaries, in the order of the sums it reports
        self.owned = {t: np.flatnonzero(np.arange(k) % trainers == t) for t in range(trainers)}
        self.unavailable = iterates_unavailable(config)
        # [k]: each canary's privatized-gradient sum over every step so far (all iterates)
        self.sums = np.zeros(k)

    def add_sums(self, canary_sums: Mapping[int, np.ndarray]) -> None:
        """One round's sums, per trainer (the client index), over that trainer's steps."""
        for trainer, sums in canary_sums.items():
            owned = self.owned.get(int(trainer))
            if owned is None or len(owned) != len(sums):
                raise ValueError(
                    f"trainer {trainer} sent {len(sums)} gradient-canary sums; it owns "
                    f"{0 if owned is None else len(owned)}"
                )
            self.sums[owned] += sums

    def resume_state(self) -> dict:
        """What a resumed run needs to continue the all-iterates sums (JSON)."""
        return {} if self.unavailable else {GRADIENT_CANARY_SUMS: self.sums.tolist()}

    def restore(self, state: Mapping) -> None:
        saved = state.get(GRADIENT_CANARY_SUMS)
        if self.unavailable:
            return
        if saved is None or len(saved) != len(self.sums):
            self.unavailable = (
                "resumed from a checkpoint without the gradient-canary sums of its rounds"
            )
            return
        self.sums = np.asarray(saved, dtype=np.float64)

    def observe(
        self,
        server_round: int,
        state: np.ndarray,
        dp_epsilon_max: float | None,
        canary_sums: Mapping[int, np.ndarray] | None = None,
    ) -> dict | None:
        if self.canaries is None:
            self.canaries = dirac_canaries(
                state.size, self.config.dp_audit.gradient_canaries, self.seed
            )
        values = state[self.canaries.coordinates]
        if self.initial is None:
            self.initial = values
            return None
        if canary_sums:
            self.add_sums(canary_sums)
        statistics = {"final_model": dirac_scores(self.canaries, self.initial, values)}
        if not self.unavailable:
            statistics["all_iterates"] = self.canaries.signs * self.sums
        included = self.canaries.included
        claimed, delta, claimed_by = record_claim(self.config, server_round, dp_epsilon_max)
        cfg = self.config.dp_audit
        facts: dict = {
            "canaries": len(included),
            "included": int(included.sum()),
            "insertion": "poisson at the run's sample rate, before the noise",
            "epsilon_claimed": claimed,
            "claimed_by": claimed_by,
            "delta": delta,
            "confidence": cfg.confidence,
            "verdict_rule": VERDICT_RULE,
        }
        if included.all() or not included.any():
            return {**facts, "verdict": "undetermined (every canary on one side)"}
        # Two methods per statistic, all holding together with probability `confidence`.
        significance = (1 - cfg.confidence) / (2 * len(statistics))
        facts["significance"] = significance
        bounds, ceilings = [], []
        for name, scores in statistics.items():
            stat = one_run_statistic(scores[included], scores[~included], delta, significance)
            facts[name] = stat
            bounds += [stat[f"epsilon_{m}"] for m in METHODS]
            ceilings += [stat[f"epsilon_ceiling_{m}"] for m in METHODS]
        if self.unavailable:
            facts["all_iterates"] = {"unavailable": self.unavailable}
        facts["epsilon_ceiling"] = max(ceilings)
        facts["verdict"] = run_verdict(
            self.config, server_round, bounds, claimed, facts["epsilon_ceiling"]
        )
        return facts


def record_claim(
    config: Config, server_round: int, dp_epsilon_max: float | None
) -> tuple[float, float, str]:
    """(epsilon, delta, which mechanism) of the smallest epsilon the run claims per record."""
    claims = []
    if config.dp_sgd.enabled:
        eps = math.inf if dp_epsilon_max is None else float(dp_epsilon_max)
        claims.append((eps, config.dp_sgd.delta, "dp_sgd"))
    if config.client_dp.enabled and config.mode == "federated":
        eps = client_epsilon(config, server_round)
        claims.append((eps, config.client_dp.delta, "client_dp"))
    return min(claims)


class ClientCanaryAudit:
    """Cosines of canary directions with the global model's change (Andrew et al. 2023).

    Directions 0..k-1 belong to the inserted canary clients, k..2k-1 are never inserted; all
    are regenerated from their seed when needed (a few ms each), never stored.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.k = config.dp_audit.client_canaries
        self.seed = canary_seed(config)
        self.initial: np.ndarray | None = None
        self.previous: np.ndarray | None = None
        self.cosine_sums = np.zeros(2 * self.k)  # all iterates: sum over rounds of cosines

    def observe(self, server_round: int, state: np.ndarray) -> dict | None:
        if self.initial is None or self.previous is None:
            self.initial = self.previous = state
            return None
        step, total = state - self.previous, state - self.initial
        self.previous = state
        final = np.empty(2 * self.k)
        for i in range(2 * self.k):
            direction = canary_direction(state.size, self.seed, i).astype(np.float64)
            self.cosine_sums[i] += cosine(direction, step)
            final[i] = cosine(direction, total)
        return self._facts(server_round, {"final_model": final, "all_iterates": self.cosine_sums})

    def _facts(self, server_round: int, statistics: dict[str, np.ndarray]) -> dict:
        dp, cfg = self.config.client_dp, self.config.dp_audit
        claimed = client_epsilon(self.config, server_round)
        significance = (1 - cfg.confidence) / 2  # two threat models, one joint confidence
        facts: dict = {
            "canaries": self.k,
            "unobserved": self.k,
            "epsilon_claimed": claimed,
            "delta": dp.delta,
            "confidence": cfg.confidence,
            "epsilon_ceiling": gdp_ceiling(self.k, dp.delta, significance),
            "verdict_rule": VERDICT_RULE,
        }
        bounds = []
        for name, stats in statistics.items():
            inserted, unobserved = stats[: self.k], stats[self.k :]
            bound = gdp_lower_bound(inserted, unobserved, dp.delta, significance)
            bounds.append(bound)
            facts[name] = {
                # Andrew et al.'s Gaussian fit: a point estimate, not a bound.
                "epsilon_estimate": gaussian_fit_epsilon(inserted, unobserved, dp.delta),
                "epsilon_lower_bound": bound,
                "cosine_mean_inserted": float(inserted.mean()),
                "cosine_mean_unobserved": float(unobserved.mean()),
                "cosine_std_unobserved": float(unobserved.std(ddof=1)),
            }
        facts["verdict"] = run_verdict(
            self.config, server_round, bounds, claimed, facts["epsilon_ceiling"]
        )
        return facts
