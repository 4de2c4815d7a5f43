"""A Node client (grpc-js + proto-loader, reading proto/ directly) holds a two-turn conversation."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import RunningServer

NODE_CLIENT = Path(__file__).resolve().parents[2] / "clients" / "node"


async def test_node_converse_two_turns(server: RunningServer) -> None:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("ANTIPHON_REQUIRE_NODE") == "1":
            pytest.fail("node is not installed but ANTIPHON_REQUIRE_NODE=1 (make node)")
        pytest.skip("node is not installed on this machine")
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("clients/node dependencies are missing: run `make setup` (npm ci in clients/node)")
    proc = await asyncio.create_subprocess_exec(
        node, "chat.js", server.address, "first", "second",
        cwd=NODE_CLIENT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["Hello, world.", "Hello, world."]
    assert err.decode().count("REASON_COMPLETED") == 2
