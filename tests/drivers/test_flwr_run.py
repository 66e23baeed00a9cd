"""`flwr run .`: Flower's own CLI drives the same ServerApp/ClientApp (local simulation).

The test isolates Flower completely (temporary HOME and FLWR_HOME, a free SuperLink port) and
stops the SuperLink daemon that `flwr run` leaves behind, with everything it spawned.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from fedmem.config import from_run_config, load_config, to_run_config

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _pyproject_lines(flat: dict) -> str:
    """Lines of `[tool.flwr.app.config]`, as `fedmem config CONFIG --flower` prints them."""
    return "\n".join(f'"{key}" = {json.dumps(value)}' for key, value in flat.items())


def test_flower_refuses_a_run_config_key_the_app_config_does_not_list():
    """Why pyproject.toml lists every key: `flwr run --run-config` (and `fedmem deploy-local`,
    which passes a run's whole flat config that way) may only override listed keys."""
    from flwr.common.config import fuse_dicts

    assert fuse_dicts({"a": 1, "b": 2}, {"b": 3}) == {"a": 1, "b": 3}
    with pytest.raises(ValueError, match="not present"):
        fuse_dicts({"a": 1}, {"c": 3})


def test_pyproject_app_config_lists_every_key_and_resolves_to_the_quickstart():
    app_config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    listed = app_config["config"]
    quickstart = load_config(REPO / "configs/quickstart.toml")
    expected = to_run_config(quickstart)
    missing = {k: v for k, v in expected.items() if k not in listed}
    assert not missing, (
        "pyproject.toml's [tool.flwr.app.config] must list every config key (Flower refuses "
        "a --run-config override of a key it does not list). Paste these lines into it:\n"
        + _pyproject_lines(missing)
    )
    unknown = sorted(set(listed) - set(expected))
    assert not unknown, f"pyproject.toml's [tool.flwr.app.config]: remove {unknown}"
    resolved = from_run_config(listed)
    differs = {k: v for k, v in expected.items() if to_run_config(resolved)[k] != v}
    assert resolved == quickstart, (
        "pyproject.toml's [tool.flwr.app.config] differs from configs/quickstart.toml; "
        "replace these lines:\n" + _pyproject_lines(differs)
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_mentioning(token: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if token in cmd:
            pids.append(int(d.name))
    return pids


def _stop_processes_mentioning(token: str, timeout: float = 10.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _pids_mentioning(token)
        if not pids:
            return
        for pid in pids:
            # superlink and superexec lead their own process groups
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pids_mentioning(token):
            time.sleep(0.2)


def _run_config_file(flat: dict, path: Path) -> str:
    # A TOML file, because list values travel as JSON strings with quotes inside.
    path.write_text("".join(f'"{k}" = {json.dumps(v)}\n' for k, v in flat.items()))
    return str(path)


@pytest.mark.slow
def test_flwr_run_drives_the_app_to_a_complete_run_folder(tiny_raw, tmp_path):
    from fedmem.config import build_config

    cfg = build_config(tiny_raw)
    flwr_home, port = tmp_path / "flwr-home", _free_port()
    (tmp_path / "home").mkdir()
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "FLWR_HOME": str(flwr_home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(port),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    overrides = {k: v for k, v in to_run_config(cfg).items() if k != "mode"}
    cmd = [
        str(BIN / "flwr"),
        "run",
        str(REPO),
        "--stream",
        "--federation-config",
        "num-supernodes=2 client-resources-num-cpus=1",
        "--run-config",
        _run_config_file(overrides, tmp_path / "run-config.toml"),
    ]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        run_id = re.search(r"Successfully started run (\d+)", out)
        assert run_id, out
        status = subprocess.run(
            [str(BIN / "flwr"), "list", "--run-id", run_id.group(1), "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        assert '"status": "finished:completed"' in status, status + "\n" + out
    finally:
        _stop_processes_mentioning(str(flwr_home))
        _stop_processes_mentioning(f"127.0.0.1:{port} ")
    assert not _pids_mentioning(str(flwr_home))
    summary = json.loads((cfg.run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2
    metrics = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in metrics] == [0, 1, 2]
