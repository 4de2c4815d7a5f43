"""Checks that let a server that cannot start say why in seconds, before its models load."""

from __future__ import annotations

import errno
import socket
from typing import Any

from antiphon.config import ContextSettings
from antiphon.redis_support import sentinel_problem
from antiphon.telemetry.metrics import Metrics

REDIS_PING_TIMEOUT_S = 5.0
SENTINEL_TIMEOUT_S = 2.0

_WHY = {
    errno.EADDRINUSE: "the address is in use",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
    errno.EADDRNOTAVAIL: "the address is not on this machine",
}


class StartupError(Exception):
    """The server cannot start; the message names the cause and the setting to change."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def check_port_free(setting: str, host: str, port: int) -> None:
    """Bind and release ``host:port`` as the gRPC server will (SO_REUSEADDR, dual-stack), so a taken
    port fails now rather than after the models have loaded. Port 0 (any free port) always works."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"server.host: cannot resolve {host!r}: {exc.strerror}") from None
    for family, kind, proto, _name, address in infos:
        try:
            probe = socket.socket(family, kind, proto)
        except OSError:  # e.g. no IPv6 on this machine: grpc skips that family too
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL and len(infos) > 1:
                    continue  # one family of several (localhost's ::1 without IPv6)
                why = _WHY.get(exc.errno or 0, exc.strerror or str(exc))
                raise StartupError(f"{setting}: cannot listen on {host}:{port}: {why} (set {setting})") from None


async def redis_startup_error(c: ContextSettings, why: str) -> StartupError:
    """Redis did not answer the start-up ping: say where it was looked for, and with sentinels what
    they answered (none reachable, no such master, the master down or not answering)."""
    fix = 'or set context.sessions = "memory"'
    if not c.redis_sentinels:
        return StartupError(f"context.redis_url: Redis at {c.redis_url} is unreachable ({why}); start it, {fix}")
    problem = await sentinel_problem(c, SENTINEL_TIMEOUT_S)
    if problem is None:
        sentinels = ", ".join(c.redis_sentinels)
        problem = f"the master {c.redis_master!r} that the sentinels ({sentinels}) name does not answer ({why})"
    return StartupError(f"context.redis_sentinels: {problem}; start them or fix the setting, {fix}")


def start_metrics(metrics: Metrics, host: str, port: int) -> Any:
    """The Prometheus endpoint, started; a taken port is a start-up failure, not a silent hang."""
    try:
        return metrics.serve(host, port)
    except OSError as exc:
        why = _WHY.get(exc.errno or 0, exc.strerror or str(exc))
        raise StartupError(
            f"telemetry.metrics_port: cannot listen on {host}:{port}: {why} "
            "(set telemetry.metrics_port; 0 turns the metrics endpoint off)"
        ) from None
