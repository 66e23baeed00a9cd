"""NEFTune: uniform noise of scale alpha / sqrt(L * d) on the input embeddings, in every
training forward pass and never in an audit; seeded by the local training seed; under full
fine-tuning, LoRA and DP-SGD alike."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import pytest
import torch

from attacks.extraction import greedy_continuations
from fedmem.config import ConfigError, build_config, to_dict
from fedmem.mitigations import registry
from fedmem.mitigations.local_fit import local_fit
from fedmem.mitigations.neftune import embedding_noise, noise_bound
from fedmem.models.loading import build_model, get_trainable_state, load_tokenizer
from fedmem.runs.store import mitigations_label
from fedmem.training import encode_samples, mean_token_loss

REPO = Path(__file__).resolve().parents[2]
TEXTS = [
    f"Patient {i} was seen on day {i * 3}; the record lists drug {i * 7}" + " again" * i
    for i in range(8)
]


def _config(tiny_raw, finetuning="full", neftune=True, alpha=5.0, **sections):
    raw = copy.deepcopy(tiny_raw)
    raw["model"]["finetuning"] = finetuning
    raw["lora"] = {"dropout": 0.0}
    raw["training"].update(batch_size=4, local_steps=2)
    raw["neftune"] = {"enabled": neftune, "alpha": alpha}
    raw.update(sections)
    return build_config(raw)


def _rows(config):
    return encode_samples(load_tokenizer(config), TEXTS, 48)


def _fit(config, model, seed=0):
    pad = load_tokenizer(config).pad_token_id
    return local_fit(config, model, _rows(config), None, pad, seed)


def _first_layer(model):
    return next(m for m in model.modules() if type(m).__name__.endswith("DecoderLayer"))


class EmbeddingSpy:
    """Records, for every forward pass, the clean embedding output (a hook put on before
    NEFTune's, so it runs first) and what the first decoder layer receives."""

    def __init__(self, model) -> None:
        self.clean, self.received = [], []
        self.handles = [
            model.get_input_embeddings().register_forward_hook(
                lambda _m, _a, out: self.clean.append(out.detach().clone())
            ),
            _first_layer(model).register_forward_pre_hook(self._layer_input, with_kwargs=True),
        ]

    def _layer_input(self, _module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self.received.append(hidden.detach().clone())

    def noises(self) -> list[torch.Tensor]:
        assert len(self.clean) == len(self.received) > 0
        return [r - c for c, r in zip(self.clean, self.received, strict=True)]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _assert_neftune_noise(noise: torch.Tensor, alpha: float) -> None:
    bound = noise_bound(alpha, noise.shape[1], noise.shape[2])
    assert noise.abs().max() <= bound * (1 + 1e-4)
    assert noise.abs().max() > 0.9 * bound  # [-bound, bound] is filled, not a smaller range


# ------------------------------------------------------------------------- the noise


def test_noise_is_uniform_in_plus_minus_alpha_over_sqrt_of_length_times_dim():
    embeddings = torch.zeros(8, 40, 64)
    generator = torch.Generator().manual_seed(0)
    noise = embedding_noise(embeddings, 5.0, generator)
    bound = 5.0 / math.sqrt(40 * 64)
    assert noise.shape == embeddings.shape
    assert noise.abs().max() <= bound
    assert noise.abs().max() > 0.999 * bound
    assert abs(float(noise.mean())) < 0.02 * bound
    assert float(noise.std()) == pytest.approx(bound / math.sqrt(3), rel=0.02)  # U(-b, b)
    longer = embedding_noise(torch.zeros(8, 160, 64), 5.0, generator)  # 4x L: half the scale
    assert float(longer.abs().max()) == pytest.approx(bound / 2, rel=0.01)
    half = embedding_noise(torch.zeros(2, 40, 64, dtype=torch.bfloat16), 5.0, generator)
    assert half.dtype == torch.bfloat16


def test_config_defaults_validation_label_and_preset():
    from fedmem.config import load_config

    config = build_config({})
    assert not config.neftune.enabled and config.neftune.alpha == 5.0
    for alpha in (0, -1.0):
        with pytest.raises(ConfigError, match="neftune.alpha"):
            build_config({"neftune": {"alpha": alpha}})
    assert mitigations_label(to_dict(config)) == "none"
    on = to_dict(build_config({"neftune": {"enabled": True}}))
    assert mitigations_label(on) == "neftune(alpha=5)"
    both = to_dict(build_config({"goldfish": {"enabled": True},
                                 "neftune": {"enabled": True, "alpha": 100}}))
    assert mitigations_label(both) == "goldfish(k=4,hashed)+neftune(alpha=100)"
    assert "neftune" in [m.name for m in registry.mitigations()]
    preset = load_config(REPO / "configs/mitigations/neftune.toml")
    assert preset.neftune.enabled and preset.neftune.alpha == 5.0


# ------------------------------------------------------------- training only, never audits


def test_every_training_forward_sees_noised_embeddings_and_the_hook_is_gone_after(tiny_raw):
    config = _config(tiny_raw, alpha=15.0)
    model = build_model(config)
    spy = EmbeddingSpy(model)
    embeddings = model.get_input_embeddings()
    hooks_before = list(embeddings._forward_hooks)
    _fit(config, model)
    noises = spy.noises()
    assert len(noises) >= 2  # at least one forward pass per step
    for noise in noises:
        _assert_neftune_noise(noise, alpha=15.0)
    assert not torch.equal(noises[0].flatten()[:64], noises[1].flatten()[:64])  # fresh draws
    assert list(embeddings._forward_hooks) == hooks_before
    assert not model.training


def test_audits_after_training_see_the_model_without_noise(tiny_raw):
    """The audit's logits, held-out loss and generations of a model trained with NEFTune
    equal those of the same weights in a model that never had the hook; and in eval mode
    the hook adds nothing even while it is on."""
    config = _config(tiny_raw, alpha=50.0)
    model = build_model(config)
    _fit(config, model)
    clean = build_model(config)
    clean.load_state_dict(model.state_dict())
    pad = load_tokenizer(config).pad_token_id
    rows = _rows(config)
    ids = torch.tensor([rows[0][:20]])

    def audit_view(m):
        with torch.no_grad():
            logits = m(input_ids=ids).logits
        loss = mean_token_loss(m, rows, 4, pad)
        generated = greedy_continuations(m, [rows[1][:10]], 8, pad)
        return logits, loss, generated

    expected = audit_view(clean.eval())
    for got in (audit_view(model.eval()), _with_hook_on(config, model, audit_view)):
        assert torch.equal(got[0], expected[0])
        assert got[1] == expected[1]
        assert got[2] == expected[2]
    with registry.training_hooks(config, model, seed=0):  # the same model in training mode
        model.train()
        with torch.no_grad():
            noisy = model(input_ids=ids).logits
        model.eval()
    assert not torch.allclose(noisy, expected[0])


def _with_hook_on(config, model, view):
    with registry.training_hooks(config, model, seed=0):
        return view(model)


# --------------------------------------------------------------------- seeded, own RNG


def test_deterministic_per_seed_and_leaves_the_global_rng_alone(tiny_raw):
    config = _config(tiny_raw)
    off = _config(tiny_raw, neftune=False)
    states, rng_after = [], []
    for cfg, seed in ((config, 0), (config, 0), (config, 1), (off, 0)):
        model = build_model(cfg)
        _fit(cfg, model, seed)
        states.append(get_trainable_state(model))
        rng_after.append(torch.get_rng_state())
    same, again, other_seed, without = states
    assert all((a == b).all() for a, b in zip(same, again, strict=True))
    assert any((a != b).any() for a, b in zip(same, other_seed, strict=True))
    assert any((a != b).any() for a, b in zip(same, without, strict=True))
    # No draw from torch's global RNG: a run with NEFTune leaves it where one without does.
    assert torch.equal(rng_after[0], rng_after[3])


# ------------------------------------------------------------------ under LoRA and DP-SGD


@pytest.mark.parametrize(
    ("finetuning", "dp"),
    [("lora", False), ("full", True), ("lora", True)],
    ids=["lora", "full+dp-sgd", "lora+dp-sgd"],
)
def test_works_under_lora_and_dp_sgd(tiny_raw, finetuning, dp):
    """The hook sits on the embedding module itself, so peft's and opacus' wrappers leave it
    in place: every training forward is noised and the weights change, and differently
    from the same seed without NEFTune."""
    sections = {"dp_sgd": {"enabled": True, "noise_multiplier": 0.5}} if dp else {}
    config = _config(tiny_raw, finetuning, **sections)
    model = build_model(config)
    before = get_trainable_state(model)
    spy = EmbeddingSpy(model)
    fit = _fit(config, model)
    spy.remove()
    assert fit.result.steps == 2
    for noise in spy.noises():
        _assert_neftune_noise(noise, alpha=5.0)
    after = get_trainable_state(model)
    assert all((a != b).any() for a, b in zip(before, after, strict=True))
    if dp:
        assert fit.metrics()["dp_steps"] == 2 and fit.history()["steps"] == [2]
    off = dataclasses.replace(config, neftune=dataclasses.replace(config.neftune, enabled=False))
    plain = build_model(off)
    _fit(off, plain)
    assert any((a != b).any() for a, b in zip(after, get_trainable_state(plain), strict=True))


# ------------------------------------------------------------------------- a whole run


def test_a_federated_run_with_neftune_audits_clean_models_and_is_labelled(tiny_raw):
    """In process (no Ray): the round-0 audit (the base model) equals a run without NEFTune,
    the trained rounds differ, and the store labels the run."""
    from fedmem.files import read_jsonl
    from fedmem.runs.store import query
    from tests.support.inprocess import run_fedmem_in_process

    raw = {**copy.deepcopy(tiny_raw), "federation": {"num_clients": 2, "rounds": 1}}
    rows = {}
    for name, enabled in (("neftune", True), ("plain", False)):
        config = build_config({**raw, "name": name, "neftune": {"enabled": enabled,
                                                                 "alpha": 15.0}})
        run_fedmem_in_process(config)
        rows[name] = read_jsonl(config.run_dir / "metrics.jsonl")
    assert rows["neftune"][0]["heldout_loss"] == rows["plain"][0]["heldout_loss"]
    assert rows["neftune"][0]["extraction"] == rows["plain"][0]["extraction"]
    assert rows["neftune"][1]["heldout_loss"] != rows["plain"][1]["heldout_loss"]
    assert math.isfinite(rows["neftune"][1]["heldout_loss"])
    store = query(config.run_dir.parent / "fedmem.sqlite", "SELECT run_id, mitigations FROM runs")
    assert dict(zip(store.run_id, store.mitigations, strict=True)) == {
        "neftune": "neftune(alpha=15)", "plain": "none"
    }
