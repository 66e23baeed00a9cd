"""The mitigation registry: every mitigation module is found by scanning the package, labels
are what the store always wrote, a new module is picked up with no other edit, and reading
labels loads neither torch, opacus nor flwr."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fedmem.mitigations
from fedmem.config import ConfigError, build_config, to_dict
from fedmem.mitigations import registry
from fedmem.runs.store import mitigations_label

REPO = Path(__file__).resolve().parents[2]
# Modules of fedmem/mitigations that are machinery, not mitigations.
MACHINERY = {"registry", "local_fit", "client_mods", "dp_history"}


def test_every_mitigation_module_of_the_package_is_registered():
    public = {
        info.name
        for info in pkgutil.iter_modules(fedmem.mitigations.__path__)
        if not info.name.startswith("_")
    }
    declared = {}
    for name in sorted(public - MACHINERY):
        module = importlib.import_module(f"fedmem.mitigations.{name}")
        assert isinstance(getattr(module, "MITIGATION", None), registry.Mitigation), name
        declared[name] = module.MITIGATION
    assert list(registry.mitigations()) == sorted(
        declared.values(), key=lambda m: (m.order, m.name)
    )
    assert {"goldfish", "weight_noise", "dp_sgd", "client_dp", "secure_aggregation"} <= set(
        declared
    )
    for machinery in MACHINERY & public:
        module = importlib.import_module(f"fedmem.mitigations.{machinery}")
        assert not hasattr(module, "MITIGATION")


def _saved(**sections) -> dict:
    """A config as the run folder saves it (config.json)."""
    return to_dict(build_config(sections))


@pytest.mark.parametrize(
    ("sections", "label"),
    [
        ({}, "none"),
        ({"goldfish": {"enabled": True}}, "goldfish(k=4,hashed)"),
        ({"goldfish": {"enabled": True, "k": 3, "variant": "static"}}, "goldfish(k=3,static)"),
        ({"weight_noise": {"sigma": 0.005}}, "weight-noise(sigma=0.005)"),
        ({"dp_sgd": {"enabled": True}}, "dp-sgd(sigma=1)"),
        ({"dp_sgd": {"enabled": True, "target_epsilon": 8.0}}, "dp-sgd(eps=8)"),
        ({"client_dp": {"enabled": True}}, "client-dp(client-fixed,sigma=1)"),
        (
            {"client_dp": {"enabled": True, "clipping": "server-fixed",
                           "noise_multiplier": 0.05}},
            "client-dp(server-fixed,sigma=0.05)",
        ),
        ({"secagg": {"enabled": True}}, "secagg"),
        (
            {
                "secagg": {"enabled": True},
                "client_dp": {"enabled": True, "noise_multiplier": 0.5},
                "dp_sgd": {"enabled": True, "noise_multiplier": 1.5},
                "weight_noise": {"sigma": 0.001},
                "goldfish": {"enabled": True},
            },
            "goldfish(k=4,hashed)+weight-noise(sigma=0.001)+dp-sgd(sigma=1.5)"
            "+client-dp(client-fixed,sigma=0.5)+secagg",
        ),
    ],
)
def test_labels_are_the_ones_the_store_always_wrote(sections, label):
    assert mitigations_label(_saved(**sections)) == label


def test_a_saved_config_from_before_a_section_existed_still_has_a_label():
    old = {"goldfish": {"enabled": True, "k": 4, "h": 13, "variant": "hashed"}}
    assert mitigations_label(old) == "goldfish(k=4,hashed)"
    assert mitigations_label({}) == "none"


FAKE = """
from fedmem.mitigations.registry import Mitigation

def label(config):
    fake = config.get("fake", {})
    return f"fake(x={fake['x']})" if fake.get("enabled") else None

MITIGATION = Mitigation(name="fake", order=99, label=label)
"""


@pytest.fixture
def extra_modules(tmp_path, monkeypatch):
    """Write modules into a folder that joins fedmem.mitigations' path; rescans the registry."""
    folder = tmp_path / "more_mitigations"
    folder.mkdir()
    monkeypatch.setattr(fedmem.mitigations, "__path__", [*fedmem.mitigations.__path__, str(folder)])
    written: list[str] = []

    def add(name: str, source: str) -> None:
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        registry.mitigations.cache_clear()

    yield add
    for name in written:
        sys.modules.pop(f"fedmem.mitigations.{name}", None)
    monkeypatch.undo()
    registry.mitigations.cache_clear()


def test_a_new_mitigation_module_reaches_the_store_label_with_no_other_edit(extra_modules):
    extra_modules("fake_mitigation", FAKE)
    assert [m.name for m in registry.mitigations()][-1] == "fake"
    config = {**_saved(goldfish={"enabled": True}), "fake": {"enabled": True, "x": 7}}
    assert mitigations_label(config) == "goldfish(k=4,hashed)+fake(x=7)"
    assert mitigations_label({"fake": {"enabled": False}}) == "none"


def test_two_modules_declaring_one_name_are_refused(extra_modules):
    extra_modules("fake_one", FAKE)
    extra_modules("fake_two", FAKE)
    with pytest.raises(ValueError, match="'fake' is declared by both"):
        registry.mitigations()


def test_two_step_variants_in_one_run_are_refused_naming_both(extra_modules):
    extra_modules(
        "other_steps",
        """
        from fedmem.mitigations.registry import Mitigation

        MITIGATION = Mitigation(
            name="other_steps", order=99, label=lambda c: None,
            step_variant=lambda config, n_rows, history, trainer: object(),
        )
        """,
    )
    config = build_config({"dp_sgd": {"enabled": True}})
    with pytest.raises(ConfigError, match="dp_sgd.enabled and other_steps.enabled"):
        registry.step_plan(config, 16)
    assert registry.step_plan(build_config({}), 16) is not None  # the other one alone


def test_reading_labels_imports_neither_torch_opacus_nor_flwr():
    code = textwrap.dedent(
        """
        import json, sys
        from fedmem.runs.store import mitigations_label
        from fedmem.mitigations import registry
        config = {"goldfish": {"enabled": True, "k": 4, "variant": "hashed"},
                  "dp_sgd": {"enabled": True, "target_epsilon": 0, "noise_multiplier": 1.0},
                  "client_dp": {"enabled": True, "clipping": "client-fixed",
                                "noise_multiplier": 1.0},
                  "secagg": {"enabled": True}, "weight_noise": {"sigma": 0.01}}
        label = mitigations_label(config)
        names = [m.name for m in registry.mitigations()]
        heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "opacus", "flwr"})
        print(json.dumps({"label": label, "names": names, "heavy": heavy}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    result = json.loads(out.splitlines()[-1])
    assert result["heavy"] == []
    assert result["label"] == (
        "goldfish(k=4,hashed)+weight-noise(sigma=0.01)+dp-sgd(sigma=1)"
        "+client-dp(client-fixed,sigma=1)+secagg"
    )
    assert len(result["names"]) == len(registry.mitigations())


# ---------------------------------------------------------------- the hooks, in order


def test_client_mods_keep_secagg_outside_client_side_clipping():
    from flwr.client.mod import fixedclipping_mod

    from fedmem.mitigations._secagg_flower import secaggplus_mod_counting_bytes

    config = build_config(
        {
            "federation": {"num_clients": 3},
            "secagg": {"enabled": True},
            "client_dp": {"enabled": True, "clipping": "client-fixed"},
        }
    )
    assert registry.client_mods(config, 0) == [secaggplus_mod_counting_bytes, fixedclipping_mod]
    assert registry.client_mods(build_config({}), 0) == []


def test_client_weight_and_strategy_wrapper_come_from_client_dp():
    from flwr.server.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

    plain = build_config({})
    dp = build_config({"client_dp": {"enabled": True, "clipping": "server-fixed"}})
    assert registry.client_weight(plain, 37) == 37
    assert registry.client_weight(dp, 37) == 1
    inner = FedAvg()
    assert registry.wrap_strategy(plain, inner).strategy is inner
    assert registry.wrap_strategy(plain, inner).round_facts() == {}
    wrapped = registry.wrap_strategy(dp, inner)
    assert isinstance(wrapped.strategy, DifferentialPrivacyServerSideFixedClipping)
    assert wrapped.round_facts() == {"client_dp": {"clip_norm": 1.0, "noise_std": 1 / 3}}
    wrapped.restore({"clip_norm": 2.5})
    assert wrapped.state() == {"clip_norm": 2.5}


def test_fit_workflow_is_flowers_default_unless_secagg():
    from flwr.server.workflow.default_workflows import default_fit_workflow

    assert registry.fit_workflow(build_config({})) is default_fit_workflow


def test_audited_model_transform_noises_only_inside_and_reports_sigma():
    import torch

    model = torch.nn.Linear(4, 4)
    before = [p.detach().clone() for p in model.parameters()]
    config = build_config({"weight_noise": {"sigma": 0.1}})
    with registry.audited_model(config, model, 1) as facts:
        assert facts == {"weight_noise_sigma": 0.1}
        assert not torch.equal(model.weight, before[0])
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    with registry.audited_model(config, model, 0) as facts:  # the base model: never noised
        assert facts == {"weight_noise_sigma": 0.0}
        assert torch.equal(model.weight, before[0])
    with registry.audited_model(build_config({}), model, 3) as facts:
        assert facts == {"weight_noise_sigma": 0.0}


# ------------------------------------------------- one local fit for every trainer

SPY = """
from contextlib import contextmanager
from fedmem.mitigations.registry import Mitigation

CALLS = []

@contextmanager
def _around(model, seed):
    CALLS.append(("enter", seed, model.training))
    yield
    CALLS.append(("exit", seed, model.training))

MITIGATION = Mitigation(
    name="spy", order=99, label=lambda config: None,
    training_hook=lambda config, model, seed: _around(model, seed),
)
"""


def test_a_new_training_hook_wraps_every_local_fit_of_clients_and_baseline(
    extra_modules, tiny_raw
):
    """The client app and the centralized baseline both train through `local_fit`, so a
    new module's training hook is on around each of their local fits, and off after."""
    from clients.app import training_seed
    from fedmem.drivers.centralized import epoch_seed, run_centralized
    from tests.support.inprocess import run_fedmem_in_process

    extra_modules("spy_mitigation", SPY)
    calls = importlib.import_module("fedmem.mitigations.spy_mitigation").CALLS
    raw = {**tiny_raw, "federation": {"num_clients": 2, "rounds": 1}}
    federated = build_config({**raw, "name": "federated"})
    run_fedmem_in_process(federated)
    seeds = [training_seed(federated, 1, client) for client in (0, 1)]
    assert sorted(calls) == sorted(
        [("enter", s, False) for s in seeds] + [("exit", s, False) for s in seeds]
    )
    calls.clear()
    run_centralized(build_config({**raw, "name": "centralized", "mode": "centralized"}))
    seed = epoch_seed(federated, 1)
    assert calls == [("enter", seed, False), ("exit", seed, False)]
