"""The `antiphon` command as users run it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import RunningServer

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))


def _antiphon(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "antiphon.cli", *args],
        env=ENV,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_refuses_to_start_without_models(tmp_path: Path) -> None:
    result = _antiphon("serve", "--port", "0", "--models-dir", str(tmp_path))
    assert result.returncode == 2
    assert "antiphon models prepare" in result.stderr


def test_invalid_setting_names_the_field() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "antiphon.cli", "serve"],
        env=dict(ENV, ANTIPHON_SERVER_PORT="99999"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "server.port" in result.stderr


def test_models_list_reports_missing(tmp_path: Path) -> None:
    result = _antiphon("models", "list", "--models-dir", str(tmp_path))
    assert result.returncode == 1
    assert "missing" in result.stdout


async def test_chat_one_shot_prints_the_answer(server: RunningServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "antiphon.cli",
        "chat",
        "--address",
        server.address,
        "-m",
        "hi",
        "--stats",
        env=ENV,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "Hello, world."
    assert "REASON_COMPLETED" in err.decode()


async def test_chat_interactive_keeps_the_session(server: RunningServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "antiphon.cli",
        "chat",
        "--address",
        server.address,
        env=ENV,
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(b"one\ntwo\n"), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().count("Hello, world.") == 2
