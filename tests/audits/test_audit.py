"""The composed per-round audit: every part from config, vantage points, the run folder's
per-round files and checkpoints, and the server's view of single clients."""

from __future__ import annotations

import numpy as np
import pytest

from fedmem.audits.intervals import rate_ci
from fedmem.audits.model_audit import audit_model, client_vantage
from fedmem.config import ConfigError, build_config
from fedmem.files import read_jsonl
from fedmem.mitigations import registry
from fedmem.models.loading import build_model, get_trainable_state
from fedmem.runs.folder import load_checkpoint, round_checkpoint_dir
from fedmem.runs.recorder import RunRecorder
from server.strategy import AuditedFedAvg
from tests.support import numpy_clients as nc
from tests.support.inprocess import InProcessGrid, run_rounds


def test_audit_reports_utility_extraction_exposure_and_membership_for_its_vantage(tiny_raw):
    config = build_config(tiny_raw)
    audit = audit_model(config, build_model(config), vantage="client-1")
    m = audit.metrics
    assert m["vantage"] == "client-1"
    assert m["heldout_perplexity"] > 1 and 0 <= m["utility"]["qa_accuracy"] <= 1
    u = m["utility"]
    assert u["qa_accuracy_ci"] == rate_ci(round(u["qa_accuracy"] * u["qa_n"]), u["qa_n"])
    assert u["qa_n"] > 0
    assert m["extraction"]["decoding"] == "greedy" and m["extraction"]["prefix_tokens"] == 16
    assert set(m["extraction"]["by_replicas"]) == {"0", "1", "4"}
    assert (m["exposure"]["space"], m["exposure"]["method"]) == (100, "exact")
    assert set(m["exposure"]["by_replicas"]) == {"0", "1", "4"}
    assert (m["membership"]["members"], m["membership"]["nonmembers"]) == (16, 16)
    assert set(m["membership"]["scores"]) == {
        "loss",
        "zlib",
        "min_k",
        "min_k_plus_plus",
        "reference",
        "rmia",
    }
    assert {k: len(v) for k, v in audit.rows.items()} == {
        "extraction": 8,  # canaries (4 injected, 4 twins)
        "exposure": 4,  # exposure canaries (2 injected, 2 twins)
        "membership": 32,  # 8 canaries + 12 training QA + 12 held-out QA
    }
    assert all(r["vantage"] == "client-1" for rows in audit.rows.values() for r in rows)
    assert set(audit.roc["loss"]) == {"all", "canaries", "qa"}


def test_reference_score_is_zero_and_at_chance_on_the_model_before_fine_tuning(tiny_raw):
    config = build_config(tiny_raw)
    audit = audit_model(config, build_model(config))
    assert audit.metrics["membership"]["scores"]["reference"]["all"]["auc"] == 0.5
    assert all(r["scores"]["reference"] == 0 for r in audit.rows["membership"])


def test_rmia_at_a_1_is_zero_and_at_chance_on_the_model_before_fine_tuning(tiny_raw):
    """Before fine-tuning the audited model is the reference: at a = 1 every LR is 1 and no
    sample beats any; the default a = 0.3 scores every sample in [0, 1]."""
    membership = {**tiny_raw["attack"].get("membership", {}), "rmia_offline_a": 1.0}
    config = build_config({**tiny_raw, "attack": {**tiny_raw["attack"], "membership": membership}})
    audit = audit_model(config, build_model(config))
    rmia = audit.metrics["membership"]["scores"]["rmia"]
    assert rmia["all"]["auc"] == 0.5 and set(rmia["canaries"]) >= {"auc", "auc_ci"}
    assert all(r["scores"]["rmia"] == 0 for r in audit.rows["membership"])


def test_disabled_audits_are_left_out(tiny_raw):
    raw = {**tiny_raw, "attack": {**tiny_raw["attack"], "exposure": {"enabled": False}}}
    raw["attack"]["membership"] = {"enabled": False}
    config = build_config(raw)
    audit = audit_model(config, build_model(config))
    assert "exposure" not in audit.metrics and "membership" not in audit.metrics
    assert set(audit.rows) == {"extraction"}


def test_prefix_sweep_reports_each_length_with_the_mean_and_the_worst_case(tiny_raw):
    raw = {**tiny_raw, "attack": {**tiny_raw["attack"], "prefix_sweep": [4, 200]}}
    config = build_config(raw)
    audit = audit_model(config, build_model(config))
    greedy = audit.metrics["extraction"]["variants"]["greedy"]
    assert list(greedy["prefix"]) == ["16", "4", "200"]
    lengths = [greedy["prefix"][n]["injected"]["token_accuracy"] for n in ("16", "4", "200")]
    over = greedy["over_prefixes"]
    assert over["mean"]["injected"]["token_accuracy"] == pytest.approx(sum(lengths) / 3)
    assert over["worst"]["injected"]["token_accuracy"] >= max(lengths)
    assert {r["prefix_tokens"] for r in audit.rows["extraction"]} == {16, 4, 200}
    for key in ("approx_char_rate", "approx_token_rate"):  # BLEU above attack.bleu_threshold
        rates = [greedy["prefix"][n]["injected"][key] for n in ("16", "4", "200")]
        assert over["worst"]["injected"][key] >= max(rates) >= over["mean"]["injected"][key]
    assert audit.metrics["extraction"]["bleu_threshold"] == 0.75
    assert all(0 <= r["char_bleu"] <= 1 and 0 <= r["token_bleu"] <= 1
               for r in audit.rows["extraction"])


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("decoding", ["greedy", "topk"], r"^attack\.decoding\[1\] = 'topk': must be one of"),
        ("decoding", [], r"^attack\.decoding: give at least one"),
        ("prefix_sweep", [10, 0], r"^attack\.prefix_sweep\[1\] = 0: must be >= 1"),
        ("num_beams", 1, r"^attack\.num_beams = 1: must be >= 2"),
        ("bleu_threshold", 1.5, r"^attack\.bleu_threshold = 1\.5: must be <= 1\.0"),
    ],
)
def test_bad_attack_settings_are_rejected_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"attack": {key: value}})


def test_bad_sub_section_settings_are_rejected_naming_the_key():
    with pytest.raises(ConfigError, match=r"^attack\.membership\.scores\[0\] = 'ppl'"):
        build_config({"attack": {"membership": {"scores": ["ppl"]}}})
    for key, value, why in [
        ("rmia_offline_a", 1.5, r"1\.5: must be <= 1\.0"),
        ("rmia_offline_a", -0.1, r"-0\.1: must be >= 0\.0"),
        ("rmia_gamma", 0, r"0\.0: must be > 0\.0"),
    ]:
        with pytest.raises(ConfigError, match=rf"^attack\.membership\.{key} = {why}$"):
            build_config({"attack": {"membership": {key: value}}})
    with pytest.raises(ConfigError, match=r"^attack\.exposure\.estimator = 'gauss'"):
        build_config({"attack": {"exposure": {"estimator": "gauss"}}})


def test_recorder_saves_each_rounds_global_state_and_reads_it_back(tiny_raw):
    config = build_config({**tiny_raw, "output": {**tiny_raw["output"], "checkpoint_every": 2}})
    recorder = RunRecorder(config)
    recorder.start()
    model = build_model(config)
    for server_round in (0, 1, 2):
        recorder.record(server_round, model)
    saved = sorted(p.name for p in (config.run_dir / "checkpoints").iterdir())
    assert saved == ["round-000", "round-002"]  # every 2nd round, and the last (2)
    other = build_model(config)
    for p in other.parameters():
        p.data.zero_()
    assert load_checkpoint(round_checkpoint_dir(config.run_dir, 2), other)["round"] == 2
    for a, b in zip(get_trainable_state(other), get_trainable_state(model), strict=True):
        assert np.array_equal(a, b)
    rows = read_jsonl(config.run_dir / "metrics.jsonl")
    assert [r["vantage"] for r in rows] == ["global"] * 3
    assert rows[0]["client_view"] == {"status": "off"}
    assert len(read_jsonl(config.run_dir / "exposure.jsonl")) == 3 * 4
    assert len(read_jsonl(config.run_dir / "membership.jsonl")) == 3 * 32
    assert sorted(p.name for p in (config.run_dir / "roc").iterdir()) == [
        "round-000.json",
        "round-001.json",
        "round-002.json",
    ]


def test_client_views_are_recorded_with_their_vantage_and_the_round(tiny_raw):
    raw = {**tiny_raw, "attack": {**tiny_raw["attack"], "client_view": True}}
    config = build_config(raw)
    recorder = RunRecorder(config)
    recorder.start()
    model = build_model(config)
    recorder.record_client_view(1, 0, model)
    recorder.record_client_view(1, 1, model)
    row = recorder.record(1, model)
    assert row["client_view"]["status"] == "audited"
    assert set(row["client_view"]["clients"]) == {"0", "1"}
    assert row["client_view"]["clients"]["1"]["vantage"] == client_vantage(1) == "client-1"
    vantages = {r["vantage"] for r in read_jsonl(config.run_dir / "extraction.jsonl")}
    assert vantages == {"global", "client-0", "client-1"}


def test_under_secure_aggregation_the_results_say_the_client_view_does_not_exist(tiny_raw):
    raw = {**tiny_raw, "attack": {**tiny_raw["attack"], "client_view": True}}
    raw["federation"] = {"num_clients": 3, "rounds": 1}
    config = build_config({**raw, "secagg": {"enabled": True}})
    recorder = RunRecorder(config)
    recorder.start()
    row = recorder.record(0, build_model(config))
    assert row["client_view"]["status"] == "unavailable"
    assert "SecAgg+" in row["client_view"]["reason"]


def _run_strategy(config, seen):
    audited = AuditedFedAvg(
        secure_aggregation=config.secagg.enabled,
        audit_client=lambda r, c, arrays: seen.append((r, c, arrays)),
        initial_parameters=nc.initial_parameters(),
        fraction_evaluate=0.0,
        min_available_clients=config.federation.num_clients,
    )
    grid = InProcessGrid(nc.client_app(config), config.federation.num_clients, {})
    run_rounds(grid, audited, registry.fit_workflow(config))


def test_the_server_audits_each_clients_returned_state_before_averaging(tiny_raw):
    config = build_config({**tiny_raw, "federation": {"num_clients": 3, "rounds": 1}})
    seen: list = []
    _run_strategy(config, seen)
    assert sorted((r, c) for r, c, _ in seen) == [(1, 0), (1, 1), (1, 2)]
    for _, client, arrays in seen:
        own = [p + d for p, d in zip(nc.initial_state(), nc.local_step(client, 0.5), strict=True)]
        assert all(np.allclose(a, b) for a, b in zip(arrays, own, strict=True))


def test_under_secure_aggregation_no_single_client_state_is_audited(tiny_raw):
    raw = {**tiny_raw, "federation": {"num_clients": 3, "rounds": 1}}
    config = build_config({**raw, "secagg": {"enabled": True}})
    seen: list = []
    _run_strategy(config, seen)
    assert seen == []


def test_rmia_compares_with_all_non_members_when_a_kind_has_none_of_its_own():
    """A run designed with canaries but no twins still gets an RMIA score per sample."""
    from types import SimpleNamespace

    import numpy as np

    from fedmem.audits.membership import _rmia

    def sample(kind, member):
        return SimpleNamespace(kind=kind, member=member)

    def scored(target, reference):
        return SimpleNamespace(
            scores=SimpleNamespace(logprob=np.array([target])),
            reference=SimpleNamespace(logprob=np.array([reference])),
        )

    samples = [sample("canary", True), sample("qa", True), sample("qa", False),
               sample("qa", False), sample("qa", False)]
    inputs = [scored(-1.0, -3.0), scored(-1.5, -3.0), scored(-3.0, -3.0),
              scored(-3.2, -3.0), scored(-2.9, -3.0)]
    mia = SimpleNamespace(rmia_offline_a=1.0, rmia_gamma=1.0)
    config = SimpleNamespace(attack=SimpleNamespace(membership=mia))
    values = _rmia(config, tuple(samples), inputs)
    assert values[0] == 1.0 and values[1] == 1.0  # both members beat every non-member
    assert all(0.0 <= v <= 1.0 for v in values[2:])
