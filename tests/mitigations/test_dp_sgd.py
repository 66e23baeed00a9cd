"""Record-level DP-SGD: per-record clipping, noise, accounting over rounds, same loop."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from flwr.app import ConfigRecord
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedmem.config import ConfigError, build_config
from fedmem.drivers.cli import main
from fedmem.files import read_jsonl
from fedmem.mitigations.dp_sgd import private_training, sample_rate
from fedmem.models.loading import (
    build_model,
    get_trainable_state,
    load_tokenizer,
    set_trainable_state,
    trainable_names,
)
from fedmem.training import collate, encode_samples, record_losses, train_local
from tests.support.files import write_toml

TEXTS = [
    f"Question: which drug treats condition number {i}?\nAnswer: drug {i * 7}" + " daily" * i
    for i in range(16)
]


def _config(tiny_raw, finetuning="full", **dp):
    raw = copy.deepcopy(tiny_raw)
    raw["model"]["finetuning"] = finetuning
    raw["lora"] = {"dropout": 0.0}
    raw["training"].update(batch_size=4, local_epochs=1)
    raw["dp_sgd"] = {"enabled": True, **dp}
    # No gradient canaries: these tests pin DP-SGD's own arithmetic on the real records
    # (tests/mitigations/test_gradient_canaries.py adds the canaries to it).
    raw["dp_audit"] = {**raw.get("dp_audit", {}), "gradient_canaries": 0}
    return build_config(raw)


def _flat(model) -> torch.Tensor:
    return torch.cat([torch.from_numpy(a).flatten() for a in get_trainable_state(model)])


def _rows(config, n=16, max_len=64):
    return encode_samples(load_tokenizer(config), TEXTS[:n], max_len)


@pytest.mark.parametrize(
    ("finetuning", "groups", "poisson"),
    [
        ("full", [[0, 1, 2, 3]], False),
        ("lora", [[0, 1, 2, 3]], False),
        ("full", [[0, 3], [1], [2]], True),  # a batch in length groups: one backward each
        ("lora", [[2, 1], [3, 0]], True),
        ("full", [[0, 1, 2, 3]], True),
        ("full", [[0, 3], [1], [2]], False),
    ],
)
def test_update_is_the_sum_of_clipped_per_record_gradients(tiny_raw, finetuning, groups, poisson):
    clip = 1e-3  # far below every record's gradient norm: each one is clipped
    config = _config(
        tiny_raw, finetuning, noise_multiplier=0.0, max_grad_norm=clip, poisson=poisson
    )
    pad = load_tokenizer(config).pad_token_id
    rows = _rows(config, n=4)  # rows of different lengths: the batch is padded
    assert len({len(r) for r in rows}) > 1
    model = build_model(config)
    reference = copy.deepcopy(model).train()

    expected = [torch.zeros_like(p) for p in reference.parameters() if p.requires_grad]
    for row in rows:
        one = collate([row], pad)
        reference.zero_grad()
        record_losses(reference(input_ids=one.input_ids).logits, one.labels).sum().backward()
        grads = [p.grad for p in reference.parameters() if p.requires_grad]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        assert norm > 10 * clip
        for e, g in zip(expected, grads, strict=True):
            e += g * (clip / (norm + 1e-6))  # opacus' clip factor

    private = private_training(config, len(rows))
    params = [p for p in model.parameters() if p.requires_grad]
    seen: list[torch.Tensor] = []  # the gradient the wrapped optimizer is asked to apply
    inner = torch.optim.SGD(params, lr=0.0)
    inner.register_step_pre_hook(lambda *_: seen.extend(p.grad.clone() for p in params))
    steps = private.variant(model.train(), inner, len(rows), config.training)
    steps.backward([collate([rows[i] for i in group], pad) for group in groups])
    steps.step()
    steps.close()
    for got, e in zip(seen, expected, strict=True):
        e = e / len(rows)  # opacus divides the clipped sum by the expected batch size
        torch.testing.assert_close(got, e, atol=1e-5 * float(e.abs().max()), rtol=1e-4)


def _applied_gradient(config, rows, groups) -> list[torch.Tensor]:
    """The gradient the DP optimizer hands its inner optimizer after one step on `groups`."""
    pad = load_tokenizer(config).pad_token_id
    model = build_model(config, seed=0).train()  # LoRA's A starts random: the same draw
    params = [p for p in model.parameters() if p.requires_grad]
    seen: list[torch.Tensor] = []
    inner = torch.optim.SGD(params, lr=0.0)
    inner.register_step_pre_hook(lambda *_: seen.extend(p.grad.clone() for p in params))
    steps = private_training(config, len(rows)).variant(model, inner, len(rows), config.training)
    steps.backward([collate([rows[i] for i in group], pad) for group in groups])
    steps.step()
    steps.close()
    return seen


@pytest.mark.parametrize("mode", ["ghost", "bookkeeping"])
@pytest.mark.parametrize(
    ("groups", "clip"),
    [
        ([[2, 1], [3, 0]], 1e-3),  # every record clipped, a batch in length groups
        ([[0, 1, 2, 3]], 1e6),  # none clipped
        ([[0, 3], [1], [2]], 1.0),  # two clipped (norms 1.14, 1.0003), two not
    ],
)
def test_lora_clipping_modes_apply_the_same_gradient_as_hooks(tiny_raw, mode, groups, clip):
    dp = {"noise_multiplier": 0.0, "max_grad_norm": clip, "poisson": True}
    hooks = _config(tiny_raw, "lora", **dp)
    other = _config(tiny_raw, "lora", grad_sample_mode=mode, **dp)
    rows = _rows(hooks, n=4)
    expected = _applied_gradient(hooks, rows, groups)
    got = _applied_gradient(other, rows, groups)
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5 * float(e.abs().max()), rtol=1e-4)


def test_bookkeeping_refuses_full_finetuning_naming_the_key(tiny_raw):
    with pytest.raises(ConfigError, match=r"dp_sgd.grad_sample_mode = 'bookkeeping'.*'full'"):
        _config(tiny_raw, "full", grad_sample_mode="bookkeeping")


def test_bookkeeping_refuses_a_trainable_layer_that_is_not_linear(tiny_raw):
    config = _config(tiny_raw, "lora", grad_sample_mode="bookkeeping")
    model = build_model(config).train()
    model.get_input_embeddings().weight.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    private = private_training(config, 4)
    with pytest.raises(ValueError, match="nn.Linear layers only; .*embed_tokens is a Embedding"):
        private.variant(model, torch.optim.SGD(params, lr=0.0), 4, config.training)


def test_epsilon_accumulates_over_rounds_in_one_accountant(tiny_raw):
    config = _config(tiny_raw, noise_multiplier=1.0)
    pad = load_tokenizer(config).pad_token_id
    rows = _rows(config)
    model = build_model(config)
    history = None
    epsilons = []
    for server_round in (1, 2):
        private = private_training(config, len(rows), history)
        train_local(model, rows, config.training, pad, server_round, private.variant)
        # What the client keeps in its Flower node state between rounds.
        history = ConfigRecord(private.history())
        epsilons.append(private.metrics()["dp_epsilon"])

    q, per_round = 1 / 4, 4  # 16 rows in batches of 4
    assert private.sample_rate == q and private.metrics()["dp_steps"] == 2 * per_round
    for eps, steps in zip(epsilons, (per_round, 2 * per_round), strict=True):
        accountant = RDPAccountant()
        accountant.history = [(1.0, q, steps)]
        assert eps == pytest.approx(accountant.get_epsilon(delta=config.dp_sgd.delta), rel=1e-9)
    assert epsilons[0] < epsilons[1] < 2 * epsilons[0]


def test_target_epsilon_derives_sigma_for_every_planned_step_of_the_run(tiny_raw):
    config = _config(tiny_raw, target_epsilon=4.0)
    private = private_training(config, n_rows=16)
    total = config.federation.rounds * 4
    assert private.noise_multiplier == get_noise_multiplier(
        target_epsilon=4.0, target_delta=1e-5, sample_rate=1 / 4, steps=total, accountant="rdp"
    )
    accountant = RDPAccountant()
    accountant.history = [(private.noise_multiplier, 1 / 4, total)]
    assert 3.9 < accountant.get_epsilon(delta=1e-5) <= 4.0


def test_prv_accountant_when_chosen(tiny_raw):
    private = private_training(_config(tiny_raw, accountant="prv"), n_rows=16)
    private.accountant.step(noise_multiplier=1.0, sample_rate=1 / 4)
    reference = PRVAccountant()
    reference.history = [(1.0, 1 / 4, 1)]
    assert private.epsilon() == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-9)


def test_sample_rate_follows_opacus_loader_of_the_batch_size():
    assert sample_rate(16, 4) == 1 / 4
    assert sample_rate(17, 4) == 1 / 5


@pytest.mark.parametrize("finetuning", ["full", "lora"])
def test_no_noise_huge_clip_fixed_batches_equal_plain_training(tiny_raw, finetuning):
    config = _config(tiny_raw, finetuning, noise_multiplier=0.0, max_grad_norm=1e6, poisson=False)
    pad = load_tokenizer(config).pad_token_id
    # Equal-length rows (no padding) and full batches: the per-record loss averaged over
    # the batch is then the plain loop's token-mean loss, and opacus' expected batch size
    # is every batch's size.
    rows = _rows(config, max_len=12)
    assert {len(r) for r in rows} == {12}
    cfg = dataclasses.replace(config.training, grad_clip=0.0)  # no global clip either
    plain, private_model = build_model(config), build_model(config)
    train_local(plain, rows, cfg, pad, seed=3)
    train_local(private_model, rows, cfg, pad, 3, private_training(config, len(rows)).variant)
    # Adam's normalisation magnifies float-rounding differences of near-zero gradients, so
    # compare whole updates: equal to well within a thousandth of their size.
    start, a, b = (_flat(m) for m in (build_model(config), plain, private_model))
    assert (a - b).norm() < 1e-3 * (a - start).norm()


def test_lora_weights_change_after_one_dp_step(tiny_raw):
    config = _config(tiny_raw, "lora", noise_multiplier=1.0, poisson=False)
    pad = load_tokenizer(config).pad_token_id
    rows = _rows(config, n=4)
    model = build_model(config)
    before = get_trainable_state(model)
    cfg = dataclasses.replace(config.training, local_steps=1)
    result = train_local(model, rows, cfg, pad, 0, private_training(config, len(rows)).variant)
    assert result.steps == 1
    assert all((a != b).any() for a, b in zip(before, get_trainable_state(model), strict=True))


def test_empty_poisson_batch_takes_a_counted_noise_only_step(tiny_raw):
    config = _config(tiny_raw, noise_multiplier=1.0)
    rows = _rows(config)
    model = build_model(config).train()
    private = private_training(config, len(rows))
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    steps = private.variant(model, torch.optim.SGD(params, lr=1.0), len(rows), config.training)
    steps.empty_batch()
    steps.step()
    steps.close()
    assert private.accountant.history == [(1.0, 1 / 4, 1)]
    assert all(not torch.equal(b, p) for b, p in zip(before, params, strict=True))


@pytest.mark.parametrize("finetuning", ["full", "lora"])
def test_trainable_state_after_dp_training_has_the_unwrapped_names_and_order(tiny_raw, finetuning):
    config = _config(tiny_raw, finetuning)
    pad = load_tokenizer(config).pad_token_id
    rows = _rows(config, n=8)
    model = build_model(config)
    train_local(model, rows, config.training, pad, 0, private_training(config, 8).variant)
    fresh = build_model(config)
    assert trainable_names(model) == trainable_names(fresh)
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # opacus is gone
    set_trainable_state(fresh, get_trainable_state(model))
    for a, b in zip(get_trainable_state(fresh), get_trainable_state(model), strict=True):
        assert (a == b).all()


@pytest.mark.parametrize(
    ("key", "value"),
    [("accountant", "gdp"), ("delta", 1.0), ("max_grad_norm", 0.0), ("noise_multiplier", -1.0)],
)
def test_bad_dp_sgd_values_are_rejected_naming_the_key(tiny_raw, key, value):
    with pytest.raises(ConfigError, match=f"dp_sgd.{key}"):
        _config(tiny_raw, **{key: value})


def test_metrics_say_when_epsilon_is_no_valid_guarantee(tiny_raw):
    private = private_training(_config(tiny_raw, poisson=False), n_rows=16)
    assert private.metrics()["dp_poisson"] is False


def _rdp_epsilon(client: dict, delta: float) -> float:
    accountant = RDPAccountant()
    accountant.history = [
        (client["dp_noise_multiplier"], client["dp_sample_rate"], client["dp_steps"])
    ]
    return accountant.get_epsilon(delta=delta)




OPACUS_NOISE = ("Secure RNG turned off", "Full backward hook is firing")


def _library_output_went_to_the_run_log(console: str, run_dir) -> None:
    """opacus' and Flower's lines are in run.log, not on the console; fedmem says once what
    they mean."""
    for noise in (*OPACUS_NOISE, "Manually terminating", "ClientAppActor pid="):
        assert noise not in console
    assert console.count("DP-SGD: opacus' secure RNG is off") == 1
    assert "Secure RNG turned off" in (run_dir / "run.log").read_text()


def test_centralized_baseline_accounts_all_epochs_in_one_accountant(tiny_raw, tmp_path, capfd):
    raw = {**tiny_raw, "mode": "centralized", "dp_sgd": {"enabled": True}}
    raw["data"] = {"num_samples": 40}
    write_toml(tmp_path / "c.toml", raw)
    assert main(["run", str(tmp_path / "c.toml")]) == 0
    _library_output_went_to_the_run_log("".join(capfd.readouterr()), build_config(raw).run_dir)
    rows = read_jsonl(build_config(raw).run_dir / "metrics.jsonl")
    assert rows[0]["dp_epsilon_max"] == 0.0
    first, second = (r["clients"]["0"] for r in rows[1:])
    assert second["dp_steps"] == first["dp_steps"] + second["steps"]
    assert second["dp_epsilon"] == pytest.approx(_rdp_epsilon(second, 1e-5), rel=1e-9)
    assert rows[2]["dp_epsilon_max"] == second["dp_epsilon"] > first["dp_epsilon"]


@pytest.mark.slow
def test_federated_clients_keep_one_accountant_across_rounds(
    tiny_raw, tmp_path, monkeypatch, capfd
):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    raw = {
        **tiny_raw,
        "model": {**tiny_raw["model"], "finetuning": "lora"},
        "dp_sgd": {"enabled": True, "noise_multiplier": 1.0},
    }
    write_toml(tmp_path / "c.toml", raw)
    assert main(["run", str(tmp_path / "c.toml")]) == 0
    _library_output_went_to_the_run_log("".join(capfd.readouterr()), build_config(raw).run_dir)
    rows = read_jsonl(build_config(raw).run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    for client in ("0", "1"):
        first, second = rows[1]["clients"][client], rows[2]["clients"][client]
        # The accountant survived the fresh NumPyClient of round 2: it holds both rounds.
        assert second["dp_steps"] == first["steps"] + second["steps"] == first["dp_steps"] * 2
        assert second["dp_epsilon"] == pytest.approx(_rdp_epsilon(second, 1e-5), rel=1e-9)
        assert first["dp_epsilon"] < second["dp_epsilon"] < 2 * first["dp_epsilon"]
    for row in rows[1:]:
        assert row["dp_epsilon_max"] == max(c["dp_epsilon"] for c in row["clients"].values())
    assert 0.0 == rows[0]["dp_epsilon_max"] < rows[1]["dp_epsilon_max"] < rows[2]["dp_epsilon_max"]
