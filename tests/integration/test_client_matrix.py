"""One test matrix for every client: the Python SDK here, the Go and TypeScript clients through their
own test runners, all against the same two real servers (tests/integration/client_matrix.py).

The Go and TypeScript runs are required under ANTIPHON_REQUIRE_CLIENTS=1 (make test); elsewhere a
missing toolchain skips them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from antiphon.v1 import admin_pb2, admin_pb2_grpc, conversation_pb2_grpc
from antiphon.v1 import events_pb2 as pb
from antiphon_client import AntiphonClient
from antiphon_client.client import auth_metadata
from antiphon_client.talk import TalkOptions, talk
from tests.integration.client_matrix import SPEECH_WORDS, MatrixServers, matrix_servers
from tests.integration.conftest import REPO, require_model

GO_PACKAGE = "github.com/antiphon/antiphon"
PCM16K = pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=16000, channels=1)
RUN_BOUND_S = 480  # under the per-test timeout (pyproject.toml), so this message wins


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MatrixServers]:
    require_model()
    with matrix_servers(tmp_path_factory.mktemp("matrix")) as running:
        yield running


def _toolchain(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (make setup installs the client toolchains)"
        if os.environ.get("ANTIPHON_REQUIRE_CLIENTS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=RUN_BOUND_S)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"


def test_go_client_matrix(servers: MatrixServers, tmp_path: Path) -> None:
    go = _toolchain("go")
    gopath = REPO / "build" / "gopath"
    link = gopath / "src" / GO_PACKAGE
    if not link.exists():
        pytest.fail("the Go workspace is missing: make build (it links the repository into build/gopath)")
    env = {
        **os.environ,
        **servers.environment(servers.new_key()),
        "GOPATH": f"{gopath}:/usr/share/gocode",
        "GO111MODULE": "off",
        "GOCACHE": str(REPO / "build" / "go-cache"),
    }
    _run([go, "test", "-count=1", "-v", "./clients/go/..."], link, env)


def test_typescript_client_matrix(servers: MatrixServers) -> None:
    _toolchain("node")
    if not (REPO / "clients" / "ts" / "dist").is_dir():
        pytest.fail("the TypeScript client is not built: make build (npm run --prefix clients/ts build)")
    env = {**os.environ, **servers.environment(servers.new_key())}
    _run(["npm", "test", "--silent"], REPO / "clients" / "ts", env)


# --- the same matrix, Python SDK ---------------------------------------------------------------


async def test_python_health_is_serving(servers: MatrixServers) -> None:
    async with grpc.aio.insecure_channel(servers.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=60)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_python_send_streams_deltas_and_ends(servers: MatrixServers) -> None:
    async with AntiphonClient(servers.address) as client:
        events = [e async for e in client.send("Hello", timeout_s=60)]
    assert any(e.HasField("agent_text") for e in events)
    assert events[-1].turn_end.reason in (pb.TurnEnd.REASON_COMPLETED, pb.TurnEnd.REASON_MAX_TOKENS)


async def test_python_bad_requests_are_invalid_argument_naming_the_field(servers: MatrixServers) -> None:
    async with AntiphonClient(servers.address) as client:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            [e async for e in client.send("", timeout_s=60)]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "text" in (err.value.details() or "")
        call = conversation_pb2_grpc.ConversationStub(client.channel).Converse(timeout=60)
        await call.write(pb.ClientEvent(text=pb.TextInput(content="hi")))
        assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "session_config" in (await call.details() or "")


async def test_python_text_in_audio_out(servers: MatrixServers) -> None:
    async with grpc.aio.insecure_channel(servers.address) as channel:
        call = conversation_pb2_grpc.ConversationStub(channel).Converse(timeout=60)
        spoken = pb.GenerationOptions(max_tokens=24, greedy=True)  # words to speak, every time
        await call.write(
            pb.ClientEvent(session_config=pb.SessionConfig(input_audio=PCM16K, output_audio=PCM16K, generation=spoken))
        )
        await call.write(pb.ClientEvent(text=pb.TextInput(content="Hello")))
        await call.write(pb.ClientEvent(end_of_input=pb.EndOfInput()))
        await call.done_writing()
        events = [e async for e in call]
    audio = b"".join(e.audio.data for e in events if e.HasField("audio"))
    assert audio
    assert any(e.HasField("turn_end") for e in events)
    assert await call.code() == grpc.StatusCode.OK


async def test_python_audio_in_audio_out(servers: MatrixServers) -> None:
    with wave.open(str(servers.speech_wav)) as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    async with grpc.aio.insecure_channel(servers.address) as channel:
        result = await talk(channel, pcm, 16000, TalkOptions(wait_s=60))
    assert result.turns
    heard = re.findall(r"[a-z0-9']+", result.turns[0].transcript.lower())
    assert set(SPEECH_WORDS.split()) <= set(heard), result.turns[0].transcript
    assert result.audio


async def test_python_credentials_and_rate_limits(servers: MatrixServers) -> None:
    async with grpc.aio.insecure_channel(servers.secured_address) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.ListModels(admin_pb2.ListModelsRequest(), timeout=60)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        key = auth_metadata(api_key=servers.new_key())
        await admin.ListModels(admin_pb2.ListModelsRequest(), metadata=key, timeout=60)
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            for _ in range(20):
                await admin.ListModels(admin_pb2.ListModelsRequest(), metadata=key, timeout=60)
        assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = dict(limited.value.trailing_metadata() or ())
        assert float(str(trailers["retry-after-ms"])) > 0
