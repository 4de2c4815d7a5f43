"""`antiphon serve` as its own process, on a free loopback port, for multi-worker tests."""

from __future__ import annotations

import asyncio
import os
import sys

from tests.integration.conftest import REPO, models_dir
from tests.redis_server import free_port


async def serve(**settings: str) -> tuple[asyncio.subprocess.Process, str]:
    """Start a server with ANTIPHON_* settings (e.g. CONTEXT_SESSIONS="redis"); returns it and its address."""
    port = free_port()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(sys.path),
        ANTIPHON_TELEMETRY_METRICS_PORT="0",
        ANTIPHON_LOG_LEVEL="warning",
        **{f"ANTIPHON_{key}": value for key, value in settings.items()},
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "antiphon.cli", "serve", "--port", str(port), "--models-dir", str(models_dir()),
        env=env, cwd=REPO,
    )  # fmt: skip
    return proc, f"127.0.0.1:{port}"
