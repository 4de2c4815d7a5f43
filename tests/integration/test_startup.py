"""`antiphon serve` as a process: a server that cannot start exits non-zero in seconds and says why;
the models directory is only read (a read-only mount; two workers starting together on one)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from antiphon.inference.prepare_embedder import is_embedder_prepared
from antiphon.v1 import context_pb2, context_pb2_grpc
from antiphon_client import AntiphonClient
from tests.integration.conftest import REPO, models_dir, require_model
from tests.redis_server import free_port

# A failed start must end well inside this (a hang is what it guards against); a healthy start
# that loads the LLM takes longer, so the bound also shows the failure came before the models.
FAILS_WITHIN_S = 20.0
HANG_TIMEOUT_S = 60.0


def _env(tmp: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTIPHON_")}
    env.update(
        PYTHONPATH=os.pathsep.join(sys.path),
        ANTIPHON_LOG_LEVEL="warning",
        ANTIPHON_SERVER_PORT=str(free_port()),
        ANTIPHON_TELEMETRY_METRICS_PORT="0",
        ANTIPHON_VOICE_ENABLED="off",
        ANTIPHON_TOOLS_DIR="",  # one thing wrong per case: the tools cases set their own
        ANTIPHON_TOOLS_STORAGE_DIR=str(tmp / "tools"),
        ANTIPHON_TOOLS_CACHE_DIR=str(tmp / "tools-cache"),
        ANTIPHON_CONTEXT_MEMORY_DIR="",
        ANTIPHON_AUTH_KEYS_FILE=str(tmp / "keys.json"),
        ANTIPHON_MODELS_DIR=str(models_dir()),
    )
    env.update({f"ANTIPHON_{key}": value for key, value in settings.items()})
    return env


@pytest.fixture
def listening() -> Iterator[int]:
    """A port some other program already listens on."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield int(other.getsockname()[1])


def _empty_dir(tmp: Path) -> str:
    (tmp / "empty").mkdir()
    return str(tmp / "empty")


def _a_file(tmp: Path) -> str:
    (tmp / "file").write_text("not a folder")
    return str(tmp / "file")


# (case, settings from (tmp, a taken port), what the one line must say)
CASES: list[tuple[str, Callable[[Path, int], dict[str, str]], str]] = [
    ("port in use", lambda _t, p: {"SERVER_PORT": str(p)}, "server.port: cannot listen on 127.0.0.1:{port}"),
    (
        "metrics port in use",
        lambda _t, p: {"TELEMETRY_METRICS_PORT": str(p)},
        "telemetry.metrics_port: cannot listen on 127.0.0.1:{port}",
    ),
    ("tools dir missing", lambda t, _p: {"TOOLS_DIR": str(t / "nope")}, "tools.dir: {tmp}/nope: the tools directory"),
    ("tools dir is a file", lambda t, _p: {"TOOLS_DIR": _a_file(t)}, "tools.dir: {tmp}/file: not a directory"),
    ("models missing", lambda t, _p: {"MODELS_DIR": _empty_dir(t)}, "is not prepared in {tmp}/empty: run `antiphon"),
    (
        "redis unreachable",
        lambda _t, _p: {"CONTEXT_SESSIONS": "redis", "CONTEXT_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
        "context.redis_url: Redis at redis://127.0.0.1:",
    ),
    ("invalid config", lambda _t, _p: {"SERVER_PORT": "99999"}, "invalid setting server.port: must be in 0..65535"),
]


@pytest.mark.parametrize(("settings", "says"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_server_that_cannot_start_exits_in_seconds_and_says_why(
    settings: Callable[[Path, int], dict[str, str]], says: str, tmp_path: Path, listening: int
) -> None:
    require_model()  # so that "models missing" is the only missing thing, and a start would load them
    env = _env(tmp_path, **settings(tmp_path, listening))
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "antiphon.cli", "serve"],
            check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=HANG_TIMEOUT_S,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server neither served nor exited within {HANG_TIMEOUT_S:g} s")
    elapsed = time.monotonic() - started
    lines = [line for line in done.stderr.splitlines() if line.startswith("antiphon: ")]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr  # one line says why
    assert says.format(port=listening, tmp=tmp_path) in lines[0]
    assert elapsed < FAILS_WITHIN_S, f"took {elapsed:.1f} s to fail"


def _read_only_mount_works() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = subprocess.run([unshare, "--mount", "true"], check=False, capture_output=True)
    return probe.returncode == 0


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


async def _start(env: dict[str, str], prefix: list[str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *(prefix or []), sys.executable, "-m", "antiphon.cli", "serve", env=env, cwd=REPO
    )


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    assert await asyncio.wait_for(proc.wait(), 30) == 0


async def _answers(address: str, *, search: bool) -> None:
    async with AntiphonClient(address) as client:
        await client.wait_ready(120)
        conv = await client.conversation()
        turn = await conv.turn("Hello")
        await conv.end()
        assert turn.turn_end is not None
        assert not turn.errors
        assert turn.text
        if search:  # the embedder reads its model from the same directory
            stub = context_pb2_grpc.ContextStub(client.channel)
            doc = context_pb2.Document(id="hours", text="The shop opens at nine.", acl_labels=["public"])
            await stub.PutDocuments(context_pb2.PutDocumentsRequest(documents=[doc]))
            reply = await stub.Search(context_pb2.SearchRequest(query="When does the shop open?", top_k=1))
            assert [h.document.metadata["document_id"] for h in reply.hits] == ["hours"]


async def test_the_server_runs_on_a_read_only_models_directory(tmp_path: Path) -> None:
    source = require_model()
    if not is_embedder_prepared(source):
        pytest.fail("the embedder is not prepared: run `make models`")
    if not _read_only_mount_works():
        pytest.skip("this machine cannot make a private read-only mount (unshare --mount)")
    ro = tmp_path / "models"
    ro.mkdir()
    before = _tree(source)
    # A private mount namespace: the read-only bind mount vanishes with the server.
    mount = f'mount --bind {source} {ro} && mount -o remount,ro,bind {ro} && exec "$@"'
    # A thread count other than the prepared one: the option reaches the model without a file written.
    env = _env(tmp_path, MODELS_DIR=str(ro), MODELS_LLM_THREADS="1")
    proc = await _start(env, ["unshare", "--mount", "sh", "-c", mount, "sh"])
    try:
        await _answers(f"127.0.0.1:{env['ANTIPHON_SERVER_PORT']}", search=True)
    finally:
        await _stop(proc)
    assert _tree(source) == before


async def test_two_workers_start_together_on_one_models_directory(tmp_path: Path) -> None:
    source = require_model()
    before = _tree(source)
    envs = [_env(tmp_path / name, MODELS_LLM_THREADS="1") for name in ("a", "b")]
    procs = await asyncio.gather(*(_start(env) for env in envs))
    try:
        await asyncio.gather(*(_answers(f"127.0.0.1:{e['ANTIPHON_SERVER_PORT']}", search=False) for e in envs))
    finally:
        for proc in procs:
            await _stop(proc)
    assert _tree(source) == before
