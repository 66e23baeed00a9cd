"""Flower's deployment engine: the same apps on a SuperLink and SuperNodes, and docker/.

The loopback test starts real `flower-superlink` / `flower-supernode` processes (insecure,
free ports, their own Flower homes), runs a 2-round audit with `flwr run . NAME --stream`,
and checks that leaving the block stops every process it started.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import psutil
import pytest
import yaml

from fedmem.config import build_config
from fedmem.drivers.cli import main
from fedmem.drivers.deployment import (
    deployed_run_config,
    flower_cli_config,
    local_deployment,
    run_config_toml,
)

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


def test_the_flower_cli_config_names_the_loopback_connection_as_default():
    parsed = tomllib.loads(flower_cli_config("loopback", "127.0.0.1:9093"))
    assert parsed["superlink"]["default"] == "loopback"
    assert parsed["superlink"]["loopback"] == {"address": "127.0.0.1:9093", "insecure": True}


def test_a_run_config_file_carries_lists_as_json_strings(tiny_raw):
    flat = deployed_run_config(build_config(tiny_raw))
    assert tomllib.loads(run_config_toml(flat)) == flat
    assert flat["canaries.replica_counts"] == "[1, 4]"


def test_a_deployed_run_writes_to_an_absolute_output_dir(tiny_raw, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    raw = {**tiny_raw, "output": {"dir": "relative-runs"}}
    assert deployed_run_config(build_config(raw))["output.dir"] == str(tmp_path / "relative-runs")


def test_deploy_local_refuses_centralized_mode_with_a_one_line_error(capsys):
    code = main(["deploy-local", "configs/quickstart.toml", "--set", "mode=centralized"])
    assert code == 2
    assert capsys.readouterr().err == (
        "fedmem: error: mode = 'centralized': deploy-local runs federated mode only\n"
    )


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_runs_one_superlink_and_one_supernode_per_partition():
    services = _compose()["services"]
    superlinks = [s for s in services.values() if "flower-superlink" in str(s.get("command"))]
    assert len(superlinks) == 1
    nodes = {n: s for n, s in services.items() if "flower-supernode" in str(s.get("command"))}
    assert len(nodes) >= 2
    partitions = []
    for service in nodes.values():
        command = " ".join(service["command"])
        assert "--superlink superlink:" in command
        partitions.append(int(re.search(r"partition-id=(\d+)", command).group(1)))
    assert sorted(partitions) == list(range(len(nodes)))


def test_compose_services_build_the_app_image_from_the_dockerfile():
    services = _compose()["services"]
    for service in services.values():
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", dockerfile, re.M)
    assert "download.pytorch.org/whl/cpu" in dockerfile  # torch CPU wheel, pinned below
    pinned = re.search(r'"torch==([\d.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert f"torch=={pinned}" in dockerfile


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.slow
def test_a_loopback_deployment_runs_a_two_round_audit_and_stops_every_process(
    tiny_raw, tmp_path
):
    config = build_config(tiny_raw)  # 2 clients, 2 rounds
    started: list[int] = []
    with local_deployment(2, tmp_path / "deployment") as deployment:
        for proc in deployment.processes.values():
            root = psutil.Process(proc.pid)
            started += [proc.pid, *(p.pid for p in root.children(recursive=True))]
        done = deployment.run_app(REPO, deployed_run_config(config), timeout=240)
        out = done.stdout + "\n" + deployment.log_tails()
        assert done.returncode == 0, out
        run_id = re.search(r"Successfully started run (\d+)", done.stdout)
        assert run_id, out
        assert deployment.run_status(int(run_id.group(1))) == "finished:completed", out
        # flower-superexec helpers (one per SuperNode, one for the SuperLink) were started
        for proc in deployment.processes.values():
            started += [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    assert len(set(started)) >= 6
    assert _alive(sorted(set(started))) == []
    metrics = (config.run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in metrics]
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert sorted(rows[2]["clients"]) == ["0", "1"]
    assert json.loads((config.run_dir / "summary.json").read_text())["rounds"] == 2
