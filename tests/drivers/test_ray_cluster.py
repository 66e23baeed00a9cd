"""The simulation on an existing Ray cluster (`federation.ray_address`).

A local `ray start --head` stands in for a cluster: the run connects to it instead of
starting a private Ray instance, and its clients run as that cluster's workers. The head is
started in its own process group, in its own temp folder, and stopped by its process tree
(never `ray stop`, which would stop every Ray instance of the user on this machine).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fedmem.config import build_config, to_run_config
from fedmem.drivers.deployment import free_port, stop_process_tree

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

RUN = (
    "import json, sys, logging; "
    "from fedmem.config import from_run_config; "
    "from fedmem.drivers.simulation import run_federated; "
    "run_federated(from_run_config(json.loads(sys.argv[1])))"
)


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ray start --head exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the Ray head did not listen on {port}")


@pytest.mark.slow
def test_a_simulation_runs_its_clients_on_an_existing_ray_cluster(tiny_raw):
    port = free_port()
    # Ray's socket paths must stay short: a temp folder directly under /tmp.
    with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as ray_dir:
        head = subprocess.Popen(
            [
                str(BIN / "ray"), "start", "--head", "--block",
                f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                f"--temp-dir={ray_dir}", "--disable-usage-stats",
            ],
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            _wait_listening(port, head)
            tiny_raw["federation"]["ray_address"] = f"127.0.0.1:{port}"
            config = build_config(tiny_raw)
            done = subprocess.run(
                [sys.executable, "-c", RUN, json.dumps(to_run_config(config))],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            workers = list(Path(ray_dir).glob("session_*/logs/python-core-worker-*.log"))
        finally:
            stop_process_tree([head])
    assert workers, "no worker ran on the cluster"
    rows = [json.loads(x) for x in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert sorted(rows[2]["clients"]) == ["0", "1"]
