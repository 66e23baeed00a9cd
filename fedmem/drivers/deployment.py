"""Flower's deployment engine on one machine: one SuperLink and N SuperNodes on loopback.

The same ServerApp and ClientApp that `fedmem run` simulates run here as separate processes
talking over HTTP, exactly as they would across sites (see docker/ for the containerised
form). `local_deployment` starts everything insecure on free loopback ports, each process in
its own process group with its own Flower home (as on separate machines), writes a Flower
CLI config with a `[superlink.NAME]` connection, and on exit stops every process it started,
the `flower-superexec` helpers included (they survive a SIGTERM to their SuperNode).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from fedmem.config import Config, ConfigError, to_run_config

BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"

# Environment shared by every Flower process started here: offline, no telemetry, no update
# check, and no `uv sync` of the app's dependencies (the app runs in this interpreter's env).
QUIET_FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


class DeploymentError(RuntimeError):
    """A local deployment failed to start or a run on it failed; the message names the log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def flower_cli_config(name: str, address: str) -> str:
    """The Flower CLI's config.toml with one insecure connection `name` (also the default)."""
    return (
        f'[superlink]\ndefault = "{name}"\n\n'
        f'[superlink.{name}]\naddress = "{address}"\ninsecure = true\n'
    )


def run_config_toml(flat: Mapping[str, bool | int | float | str]) -> str:
    """A `--run-config` file: list values travel as JSON strings with quotes inside, which
    the inline `k=v` form cannot carry."""
    return "".join(f'"{key}" = {json.dumps(value)}\n' for key, value in flat.items())


@dataclass
class LocalDeployment:
    name: str  # connection name in the CLI's Flower config
    address: str  # the SuperLink's host:port (Fleet, Control and Runtime APIs)
    workdir: Path
    env: dict[str, str]  # environment for `flwr` commands (FLWR_HOME = the CLI's home)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def log(self, process: str) -> Path:
        return self.workdir / "logs" / f"{process}.log"

    def log_tails(self, lines: int = 15) -> str:
        out = []
        for process in self.processes:
            text = self.log(process).read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {process} ---\n" + "\n".join(text))
        return "\n".join(out)

    def run_app(
        self,
        app_dir: Path,
        run_config: Mapping[str, bool | int | float | str],
        timeout: float = 600,
        stream_to: int | None = subprocess.PIPE,
    ) -> subprocess.CompletedProcess:
        """`flwr run APP NAME --stream` with `run_config` overrides; blocks until the run ends."""
        overrides = self.workdir / "run-config.toml"
        overrides.write_text(run_config_toml(run_config))
        cmd = [str(BIN / "flwr"), "run", str(app_dir), self.name, "--stream"]
        cmd += ["--run-config", str(overrides)]
        return subprocess.run(
            cmd,
            cwd=app_dir,
            env=self.env,
            stdout=stream_to,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )

    def run_status(self, run_id: int) -> str:
        """The run's status as `flwr list` reports it, e.g. "finished:completed"."""
        out = subprocess.run(
            [str(BIN / "flwr"), "list", self.name, "--run-id", str(run_id), "--format", "json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        runs = json.loads(out).get("runs", [])
        return runs[0]["status"] if runs else ""


def _start(
    deployment: LocalDeployment, process: str, cmd: list[str], env: dict[str, str]
) -> subprocess.Popen:
    log = deployment.log(process)
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            cmd,
            cwd=deployment.workdir,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped as one below
        )
    deployment.processes[process] = proc
    return proc


def _wait_listening(deployment: LocalDeployment, process: str, port: int, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if deployment.processes[process].poll() is not None:
            raise DeploymentError(
                f"{process} exited with code {deployment.processes[process].returncode}; "
                f"see {deployment.log(process)}"
            )
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.2)
    raise DeploymentError(f"{process} did not listen on port {port} in {timeout:.0f}s")


def stop_process_tree(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    """SIGTERM every process group started here and every descendant (some leave their
    group), then SIGKILL whatever is left after `grace` seconds."""
    targets: dict[int, psutil.Process] = {}
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(proc.pid)
            for p in [root, *root.children(recursive=True)]:
                targets[p.pid] = p
    groups = {proc.pid for proc in procs}  # each leads its own group (start_new_session)
    for pid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    for p in targets.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(list(targets.values()), timeout=grace)
    for pid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=grace)
    for proc in procs:  # reap the direct children
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)


@contextlib.contextmanager
def local_deployment(
    nodes: int,
    workdir: Path,
    name: str = "fedmem-local",
    env: Mapping[str, str] | None = None,
    start_timeout: float = 60,
) -> Iterator[LocalDeployment]:
    """A SuperLink and `nodes` SuperNodes on loopback (insecure), node i bound to data
    partition i through `--node-config partition-id=i`; stopped, with all their children,
    when the block exits."""
    if nodes < 1:
        raise ValueError(f"nodes = {nodes}: need at least one SuperNode")
    workdir = Path(workdir).resolve()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    base_env = {**os.environ, **(env or {}), **QUIET_FLOWER_ENV}
    base_env["PATH"] = f"{BIN}{os.pathsep}{base_env.get('PATH', '')}"

    def home(process: str) -> dict[str, str]:
        # One Flower home per process, as on separate machines: FABs are installed per home.
        (workdir / process).mkdir(exist_ok=True)
        return {**base_env, "FLWR_HOME": str(workdir / process)}

    link_port = free_port()
    address = f"{LOOPBACK}:{link_port}"
    cli_env = home("cli")
    (workdir / "cli" / "config.toml").write_text(flower_cli_config(name, address))
    deployment = LocalDeployment(name=name, address=address, workdir=workdir, env=cli_env)
    try:
        _start(
            deployment,
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--host", LOOPBACK,
                "--port", str(link_port),
                "--database", str(workdir / "superlink" / "state.db"),
                "--disable-runtime-dependency-installation",
            ],
            home("superlink"),
        )
        _wait_listening(deployment, "superlink", link_port, start_timeout)
        node_ports = {}
        for i in range(nodes):
            node_ports[f"supernode-{i}"] = port = free_port()
            _start(
                deployment,
                f"supernode-{i}",
                [
                    str(BIN / "flower-supernode"),
                    "--insecure",
                    "--superlink", address,
                    "--host", LOOPBACK,
                    "--port", str(port),
                    "--node-config", f"partition-id={i} num-partitions={nodes}",
                ],
                home(f"supernode-{i}"),
            )
        for process, port in node_ports.items():
            _wait_listening(deployment, process, port, start_timeout)
        yield deployment
    finally:
        stop_process_tree(list(deployment.processes.values()))


def app_root() -> Path:
    """The project folder `flwr run` packages: the checkout holding this pyproject.toml."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app]" not in pyproject.read_text():
        raise DeploymentError(
            f"{root}: no pyproject.toml with [tool.flwr.app]; deploy-local runs from a "
            "fedmem source checkout"
        )
    return root


def deployed_run_config(config: Config) -> dict[str, bool | int | float | str]:
    """The run's flat config, with `output.dir` absolute: the ServerApp runs in a process
    the SuperLink starts, in the SuperLink's own folder."""
    flat = to_run_config(config)
    flat["output.dir"] = str(Path(config.output.dir).resolve())
    return flat


def deploy_local(config: Config, workdir: Path, timeout: float = 24 * 3600) -> int:
    """Run `config` on a loopback deployment of `federation.num_clients` SuperNodes,
    streaming Flower's log to this terminal; the exit code of `flwr run`."""
    if config.mode != "federated":
        raise ConfigError(f"mode = {config.mode!r}: deploy-local runs federated mode only")
    with local_deployment(config.federation.num_clients, workdir) as deployment:
        done = deployment.run_app(
            app_root(), deployed_run_config(config), timeout=timeout, stream_to=None
        )
        if done.returncode:
            print(deployment.log_tails(), file=sys.stderr)
        return done.returncode
