"""Config: typed, frozen, validated once; errors name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fedmem.config import (
    Config,
    ConfigError,
    build_config,
    config_differences,
    from_run_config,
    load_config,
    parse_override,
    to_dict,
    to_run_config,
)
from fedmem.mitigations import registry


def test_defaults_build_a_valid_config():
    assert build_config({}) == Config()


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().seed = 3  # type: ignore[misc]


def test_unknown_key_is_rejected_with_its_dotted_name():
    with pytest.raises(ConfigError, match=r"unknown key 'model\.hiden_size'.*hidden_size"):
        build_config({"model": {"hiden_size": 3}})


def test_bad_choice_names_key_and_allowed_values():
    with pytest.raises(
        ConfigError, match=r"model\.finetuning = 'qlora': must be one of 'full', 'lora'"
    ):
        build_config({"model": {"finetuning": "qlora"}})


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"federation\.rounds = '3': expected an integer"):
        build_config({"federation": {"rounds": "3"}})


def test_out_of_range_value_names_bound():
    with pytest.raises(ConfigError, match=r"training\.lr = 0\.0: must be > 0"):
        build_config({"training": {"lr": 0.0}})


def test_list_items_are_typed():
    with pytest.raises(ConfigError, match=r"canaries\.replica_counts\[1\]"):
        build_config({"canaries": {"replica_counts": [1, "x"]}})


def test_canary_client_index_must_exist():
    with pytest.raises(ConfigError, match=r"canaries\.clients contains 5"):
        build_config({"canaries": {"clients": [5]}, "federation": {"num_clients": 3}})


def test_section_given_a_value_is_rejected():
    with pytest.raises(ConfigError, match="model: expected a table"):
        build_config({"model": 3})


def test_integers_are_accepted_for_float_fields():
    assert build_config({"training": {"lr": 1}}).training.lr == 1.0


def test_overrides_are_parsed_as_toml_literals_or_strings():
    assert parse_override("federation.rounds=5") == ("federation.rounds", 5)
    assert parse_override("model.finetuning=lora") == ("model.finetuning", "lora")
    assert parse_override("canaries.replica_counts=[1, 3]") == ("canaries.replica_counts", [1, 3])


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("federation.rounds")


def test_load_applies_overrides_over_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('name = "x"\n[federation]\nrounds = 2\n')
    cfg = load_config(path, ["federation.rounds=7", "model.finetuning=lora"])
    assert (cfg.name, cfg.federation.rounds, cfg.model.finetuning) == ("x", 7, "lora")


def test_load_reports_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML"):
        load_config(bad)


def test_a_file_states_only_what_it_changes_over_its_base(tmp_path):
    (tmp_path / "base.toml").write_text(
        'name = "b"\nseed = 3\n[training]\nlr = 0.1\nbatch_size = 4\n[federation]\nrounds = 9\n'
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mid.toml").write_text('base = "../base.toml"\n[training]\nlr = 0.2\n')
    (tmp_path / "top.toml").write_text(
        'base = "sub/mid.toml"\nname = "t"\n[dp_sgd]\nenabled = true\n'
    )
    cfg = load_config(tmp_path / "top.toml", ["federation.rounds=2"])
    assert (cfg.name, cfg.seed, cfg.training.lr, cfg.training.batch_size) == ("t", 3, 0.2, 4)
    assert (cfg.federation.rounds, cfg.dp_sgd.enabled) == (2, True)


def test_a_missing_or_circular_base_is_named(tmp_path):
    (tmp_path / "a.toml").write_text('base = "nope.toml"\n')
    with pytest.raises(ConfigError, match=r"a\.toml: base = 'nope\.toml': no such file"):
        load_config(tmp_path / "a.toml")
    (tmp_path / "a.toml").write_text('base = "b.toml"\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\n')
    with pytest.raises(ConfigError, match="name each other as base"):
        load_config(tmp_path / "a.toml")


def test_every_mitigation_preset_is_the_quickstart_plus_its_mitigation():
    configs = Path(__file__).resolve().parents[2] / "configs"
    quickstart = to_dict(load_config(configs / "quickstart.toml"))
    for path in sorted((configs / "mitigations").glob("*.toml")):
        preset = to_dict(load_config(path))
        changed = {k for k in quickstart if preset[k] != quickstart[k]} - {"name"}
        sections = {"model", "training"} | {m.name for m in registry.mitigations()}
        assert changed and changed <= sections, (path, changed)


def test_the_smollm2_evidence_presets_are_one_run_but_for_the_fine_tuning():
    configs = Path(__file__).resolve().parents[2] / "configs"
    lora = load_config(configs / "smollm2-evidence.toml")
    full = load_config(configs / "smollm2-evidence-full.toml")
    assert (lora.model.name, lora.mode, lora.federation.num_clients) == (
        "smollm2-135m", "federated", 2
    )
    assert (lora.model.finetuning, full.model.finetuning) == ("lora", "full")
    lora_dict, full_dict = to_dict(lora), to_dict(full)
    differ = {
        (section, key)
        for section, values in lora_dict.items()
        for key in (values if isinstance(values, dict) else [None])
        if (values if key is None else values[key])
        != (full_dict[section] if key is None else full_dict[section][key])
    }
    assert differ == {("name", None), ("model", "finetuning"), ("training", "lr")}
    # Enough canaries in the highest replica group for a tight interval, each with a twin;
    # no exposure enumeration (it is not the point and dominates the audit time).
    top, size = max(lora.canaries.group_sizes())
    assert top >= 8 and size >= 16
    assert not lora.attack.exposure.enabled and lora.attack.membership.enabled


def test_flat_run_config_round_trips():
    cfg = build_config(
        {"model": {"finetuning": "lora"}, "canaries": {"replica_counts": [2, 16], "clients": [1]}}
    )
    flat = to_run_config(cfg)
    assert all(isinstance(v, bool | int | float | str) for v in flat.values())
    assert flat["model.finetuning"] == "lora"
    assert from_run_config(flat) == cfg


def test_a_flat_config_may_leave_keys_out_and_they_take_their_defaults():
    assert from_run_config({}) == Config()
    partial = {"training.lr": 0.01, "canaries.replica_counts": "[1, 8]", "goldfish.enabled": True}
    assert from_run_config(partial) == build_config(
        {"training": {"lr": 0.01}, "canaries": {"replica_counts": [1, 8]},
         "goldfish": {"enabled": True}}
    )
    with pytest.raises(ConfigError, match="unknown key 'goldfish.nope'"):
        from_run_config({"goldfish.nope": 1})


def test_a_saved_config_without_a_newer_section_is_the_same_run_at_its_defaults():
    """A run folder saved before a section existed ran with that section's defaults
    (mitigation off): resuming it, or skipping it as a finished sweep cell, still matches."""
    config = build_config({"training": {"lr": 0.01}})
    saved = to_dict(config)
    del saved["goldfish"]  # as if saved before [goldfish] existed
    del saved["training"]["weight_decay"]
    assert config_differences(saved, config) == []
    assert config_differences(config, saved) == []
    on = build_config({"training": {"lr": 0.01}, "goldfish": {"enabled": True}})
    assert config_differences(saved, on) == [("goldfish.enabled", False, True)]


def test_shipped_configs_are_valid():
    for path in sorted(Path(__file__).resolve().parents[2].glob("configs/**/*.toml")):
        if "sweeps" not in path.parts:  # sweep files: tests/test_sweep.py
            load_config(path)


STUDY_GROUPS = {"replica_counts": [1, 10], "total": 400, "replica_shares": [0.7, 0.3]}


@pytest.mark.parametrize(
    ("canaries", "sizes"),
    [
        ({}, ((1, 8), (2, 8), (4, 8), (8, 8))),  # per_count per replica count
        (STUDY_GROUPS, ((1, 280), (10, 120))),  # the study: 70 % once, 30 % ten times
        (STUDY_GROUPS | {"total": 10}, ((1, 7), (10, 3))),
        (STUDY_GROUPS | {"total": 7, "replica_shares": [0.5, 0.5]}, ((1, 4), (10, 3))),
        ({"replica_counts": [1, 10], "total": 9}, ((1, 5), (10, 4))),  # no shares: equal
    ],
)
def test_canary_groups_share_total_by_replica_shares(canaries, sizes):
    config = build_config({"canaries": canaries})
    assert config.canaries.group_sizes() == sizes
    assert config.canaries.injected_total() == sum(n for _, n in sizes)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"replica_shares": [0.6, 0.3]}, ["canaries.replica_shares", "sum to 1"]),
        ({"replica_shares": [1.0]}, ["canaries.replica_shares", "canaries.replica_counts"]),
        ({"total": 0}, ["canaries.replica_shares", "canaries.total"]),
        ({"total": 1}, ["canaries.total", "replica count 10"]),
        ({"replica_counts": [1, 1]}, ["canaries.replica_counts", "repeats"]),
        ({"replica_shares": [0.0, 1.0]}, ["canaries.replica_shares[0]", "> 0"]),
    ],
)
def test_inconsistent_replica_shares_are_one_line_errors_naming_the_key(change, named):
    with pytest.raises(ConfigError) as err:
        build_config({"canaries": STUDY_GROUPS | change})
    assert "\n" not in str(err.value)
    assert all(key in str(err.value) for key in named), err.value
