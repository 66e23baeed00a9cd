"""Client-level DP (DP-FedAvg): every client's update is clipped to the norm before it is
averaged, on the client or on the server, and the noise is calibrated to that norm."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common import parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

from fedmem.config import ConfigError, build_config
from fedmem.mitigations import client_dp, registry
from server.strategy import AuditedFedAvg
from tests.support import numpy_clients as nc
from tests.support.inprocess import InProcessGrid, run_rounds

CLIP = 0.5
SCALE = 2.0  # local steps have norms ~8, far above CLIP


def _config(tiny_raw, secagg: bool = False, **dp):
    raw = {**tiny_raw, "federation": {"num_clients": 3, "rounds": 1}}
    dp = {"enabled": True, "noise_multiplier": 0.0, "clip_norm": CLIP, **dp}
    return build_config({**raw, "client_dp": dp, "secagg": {"enabled": secagg}})


def _norm(arrays: list[np.ndarray], base: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(arrays, base, strict=True))))


class Spy:
    """Records the parameters AuditedFedAvg.aggregate_fit receives."""

    def __init__(self, monkeypatch) -> None:
        self.results: list[list[np.ndarray]] = []
        inner = AuditedFedAvg.aggregate_fit

        def spy(strategy, server_round, results, failures):
            self.results += [parameters_to_ndarrays(r.parameters) for _, r in results]
            return inner(strategy, server_round, results, failures)

        monkeypatch.setattr(AuditedFedAvg, "aggregate_fit", spy)


def _run(config):
    audited = AuditedFedAvg(
        secure_aggregation=config.secagg.enabled,
        initial_parameters=nc.initial_parameters(),
        fraction_evaluate=0.0,
        min_available_clients=3,
    )
    grid = InProcessGrid(nc.client_app(config, SCALE), 3, {})
    strategy = client_dp.wrap_strategy(config, audited)
    context = run_rounds(grid, strategy, registry.fit_workflow(config))
    record = context.state.array_records[MAIN_PARAMS_RECORD]
    aggregate = parameters_to_ndarrays(arrayrecord_to_parameters(record, True))
    return aggregate, audited, strategy, grid


def _uploads(grid) -> list[list[np.ndarray]]:
    return [
        record.to_numpy_ndarrays()
        for reply in grid.replies
        for record in reply.content.array_records.values()
        if len(record)
    ]


def test_client_side_clipping_clips_what_leaves_the_client(tiny_raw):
    _, _, _, grid = _run(_config(tiny_raw, clipping="client-fixed"))
    uploads = _uploads(grid)
    assert len(uploads) == 3
    for upload in uploads:
        assert _norm(upload, nc.initial_state()) == pytest.approx(CLIP, rel=1e-5)


def test_server_side_clipping_clips_each_update_before_averaging(tiny_raw, monkeypatch):
    spy = Spy(monkeypatch)
    _, audited, _, grid = _run(_config(tiny_raw, clipping="server-fixed"))
    uploads = _uploads(grid)
    assert len(uploads) == 3
    assert all(_norm(u, nc.initial_state()) > 4 * CLIP for u in uploads)
    assert len(spy.results) == 3
    for arrays in spy.results:
        assert _norm(arrays, nc.initial_state()) == pytest.approx(CLIP, rel=1e-5)
    assert set(audited.round_clients[1]) == {0, 1, 2}  # the wrapper keeps per-client facts


def test_client_side_clipping_composes_with_secagg(tiny_raw):
    aggregate, _, _, grid = _run(_config(tiny_raw, secagg=True, clipping="client-fixed"))
    assert _uploads(grid) == []  # nothing but masked integers left the clients
    assert _norm(aggregate, nc.initial_state()) <= CLIP + 1e-4


def test_dp_fedavg_averages_uniformly(tiny_raw):
    config = _config(tiny_raw, clip_norm=1e6)  # never clips
    aggregate, _, _, _ = _run(config)
    expected = nc.fedavg([0, 1, 2], scale=SCALE, uniform=True)
    assert max(float(np.abs(a - e).max()) for a, e in zip(aggregate, expected, strict=True)) < 1e-5


def test_noise_std_is_multiplier_times_norm_over_sampled_clients(tiny_raw):
    config = _config(tiny_raw, clipping="client-fixed", noise_multiplier=1.2)
    strategy = client_dp.wrap_strategy(config, AuditedFedAvg())
    assert client_dp.round_facts(strategy) == pytest.approx(
        {"clip_norm": CLIP, "noise_std": 1.2 * CLIP / 3}
    )


def test_noise_is_added_to_the_average(tiny_raw):
    clean, _, _, _ = _run(_config(tiny_raw, clipping="client-fixed"))
    noisy, _, _, _ = _run(_config(tiny_raw, clipping="client-fixed", noise_multiplier=1.0))
    assert _norm(noisy, clean) > 0.01


def test_server_side_clipping_under_secagg_is_rejected_naming_both_keys(tiny_raw):
    raw = {**tiny_raw, "federation": {"num_clients": 3}}
    raw |= {"secagg": {"enabled": True}, "client_dp": {"enabled": True, "clipping": "server-fixed"}}
    with pytest.raises(ConfigError) as err:
        build_config(raw)
    message = str(err.value)
    assert "\n" not in message
    assert "client_dp.clipping" in message and "secagg.enabled" in message


@pytest.mark.parametrize("mode", ["server-adaptive", "client-adaptive"])
def test_adaptive_clipping_is_refused_because_its_epsilon_would_not_hold(tiny_raw, mode):
    """Flower 1.41's adaptive clipping moves the norm the wrong way (its norm bit means "was
    clipped", its update uses Andrew et al.'s sign for "was not") and noises with the new
    norm instead of the one it clipped with, so no epsilon computed for it holds."""
    raw = {**tiny_raw, "federation": {"num_clients": 3}}
    raw["client_dp"] = {"enabled": True, "clipping": mode, "noise_multiplier": 0.05}
    with pytest.raises(ConfigError) as err:
        build_config(raw)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"client_dp.clipping = {mode!r}")
    assert "Andrew et al." in message and "epsilon" in message and "client-fixed" in message
