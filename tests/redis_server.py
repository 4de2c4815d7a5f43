"""A real redis-server on a free loopback port, for tests (started and stopped by the fixtures)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.eventually import eventually_sync


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        message = f"{name} is not installed (make redis-server installs Debian's redis-server and redis-sentinel)"
        if os.environ.get("ANTIPHON_REQUIRE_REDIS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return binary


class RedisServer:
    def __init__(self, data_dir: Path, *, durable: bool = False, replica_of: int | None = None) -> None:
        self.binary = _binary("redis-server")
        self.port = free_port()
        self.dir = data_dir
        # durable: every acknowledged write is on disk before Redis answers, so a restart loses nothing.
        self.persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
        self.replica_of = ["--replicaof", "127.0.0.1", str(replica_of)] if replica_of is not None else []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.dir)]
        # A replica's first sync starts at once (Redis waits 5 s by default, for more replicas to join).
        return [*cmd, "--repl-diskless-sync-delay", "0", *self.persistence, *self.replica_of]

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        eventually_sync(self._accepts, message=f"{Path(self.binary).name} did not start on port {self.port}")

    def _accepts(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        # SIGTERM, not SHUTDOWN: redis-py's shutdown() waits seconds on its retry policy.
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None


class RedisSentinel(RedisServer):
    """A redis-sentinel watching the primary on ``master_port`` as ``name``, with timings short
    enough for a test: down after ``down_after_ms``, a failed failover retried after 2 x
    ``failover_timeout_ms``."""

    def __init__(
        self,
        data_dir: Path,
        master_port: int,
        *,
        name: str = "mymaster",
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        super().__init__(data_dir)
        self.binary = _binary("redis-sentinel")
        self.address = f"127.0.0.1:{self.port}"
        self.config = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {data_dir}",
            f"sentinel monitor {name} 127.0.0.1 {master_port} {quorum}",
            f"sentinel down-after-milliseconds {name} {down_after_ms}",
            f"sentinel failover-timeout {name} {failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]

    def command(self) -> list[str]:
        path = self.dir / "sentinel.conf"  # a sentinel rewrites its file with what it learns
        path.write_text("\n".join(self.config) + "\n")
        return [self.binary, str(path)]


class SentinelTopology:
    """A primary, replicas of it and three sentinels (quorum 2) on loopback, ready when `start`
    returns: every replica linked, every sentinel aware of the two others and of every replica."""

    def __init__(self, data_dir: Path, *, replicas: int = 1, name: str = "mymaster") -> None:
        self.name = name
        self.primary = RedisServer(data_dir / "primary")
        self.replicas = [RedisServer(data_dir / f"replica{i}", replica_of=self.primary.port) for i in range(replicas)]
        self.sentinels = [RedisSentinel(data_dir / f"sentinel{i}", self.primary.port, name=name) for i in range(3)]

    @property
    def addresses(self) -> str:
        """The sentinels as context.redis_sentinels takes them from the environment."""
        return ",".join(s.address for s in self.sentinels)

    def start(self) -> None:
        self.primary.start()
        for replica in self.replicas:
            replica.start()
        eventually_sync(self._linked, message="the replicas never linked to the primary")
        for sentinel in self.sentinels:
            sentinel.start()
        # Sentinels find each other through hello messages every 2 s; a failover needs them all.
        eventually_sync(self._watching, timeout_s=20, interval_s=0.1, message="the sentinels never saw each other")

    def stop(self) -> None:
        for server in [*self.sentinels, *self.replicas, self.primary]:  # sentinels first: no failover now
            server.stop()

    def _linked(self) -> bool:
        return all(_info(r.port, "replication").get("master_link_status") == "up" for r in self.replicas)

    def _watching(self) -> bool:
        for sentinel in self.sentinels:
            state = sentinel_master_state(sentinel.port, self.name)
            if state.get("num-other-sentinels") != 2 or state.get("num-slaves") != len(self.replicas):
                return False
        return True


def _info(port: int, section: str) -> dict[str, Any]:
    import redis

    with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
        try:
            return dict(client.info(section))
        except redis.RedisError:
            return {}


def sentinel_master_state(port: int, name: str) -> dict[str, Any]:
    import redis

    with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
        try:
            return dict(client.sentinel_masters().get(name, {}))
        except redis.RedisError:
            return {}
