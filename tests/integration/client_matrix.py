"""Servers for the client test matrix: every client (Python, Go, TypeScript) runs the same cases
against the same two real `antiphon serve` processes, found through the environment:

  ANTIPHON_ADDR           auth off, voice on, the real models (answers capped at a few tokens)
  ANTIPHON_SECURED_ADDR   auth.mode = "required"; ANTIPHON_API_KEY is a key limited to 2 requests/s
  ANTIPHON_SPEECH_WAV     16 kHz mono PCM16 WAV that says ANTIPHON_SPEECH_WORDS, then silence
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import soxr
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.eventually import eventually_sync
from tests.integration.conftest import REPO, models_dir
from tests.redis_server import free_port

SPEECH_WORDS = "what time is it"
START_BOUND_S = 120.0
KEY_REQUESTS_PER_S = 2


@dataclass(frozen=True)
class MatrixServers:
    address: str
    secured_address: str
    keys_file: Path
    speech_wav: Path

    def environment(self, api_key: str) -> dict[str, str]:
        return {
            "ANTIPHON_ADDR": self.address,
            "ANTIPHON_SECURED_ADDR": self.secured_address,
            "ANTIPHON_API_KEY": api_key,
            "ANTIPHON_SPEECH_WAV": str(self.speech_wav),
            "ANTIPHON_SPEECH_WORDS": SPEECH_WORDS,
        }

    def new_key(self) -> str:
        """A fresh key (its own request bucket), so one client's burst never limits the next."""
        env = {**_base_env(self.keys_file.parent), "ANTIPHON_AUTH_KEYS_FILE": str(self.keys_file)}
        done = subprocess.run(
            [sys.executable, "-m", "antiphon.cli", "keys", "create", "--tenant", "acme", "--role", "member"],
            env=env, cwd=REPO, capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        return next(line for line in done.stdout.splitlines() if line.startswith("ak_"))


def _base_env(scratch: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTIPHON_")}
    env.update(
        PYTHONPATH=os.pathsep.join(sys.path),
        ANTIPHON_LOG_LEVEL="warning",
        ANTIPHON_TELEMETRY_METRICS_PORT="0",
        ANTIPHON_MODELS_DIR=str(models_dir()),
        ANTIPHON_TOOLS_DIR="",
        ANTIPHON_TOOLS_STORAGE_DIR=str(scratch / "tools"),
        ANTIPHON_TOOLS_CACHE_DIR=str(scratch / "tools-cache"),
        ANTIPHON_CONTEXT_MEMORY_DIR="",
        ANTIPHON_GENERATION_MAX_TOKENS="24",
    )
    return env


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _speech_wav(path: Path) -> Path:
    from antiphon.voice.tts import PiperTTS

    tts = PiperTTS()
    audio = np.asarray(soxr.resample(tts.synthesize("What time is it?"), tts.sample_rate, 16000), dtype=np.int16)
    pcm = np.concatenate([np.zeros(3200, np.int16), audio, np.zeros(24000, np.int16)])
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(pcm.astype("<i2").tobytes())
    return path


@contextmanager
def matrix_servers(scratch: Path) -> Iterator[MatrixServers]:
    keys_file = scratch / "keys.json"
    open_port, secured_port = free_port(), free_port()
    open_env = {**_base_env(scratch / "open"), "ANTIPHON_VOICE_ENABLED": "on"}
    secured_env = {
        **_base_env(scratch / "secured"),
        "ANTIPHON_VOICE_ENABLED": "off",
        "ANTIPHON_AUTH_MODE": "required",
        "ANTIPHON_AUTH_KEYS_FILE": str(keys_file),
        "ANTIPHON_LIMITS_KEY_REQUESTS_PER_S": str(KEY_REQUESTS_PER_S),
    }
    serve = [sys.executable, "-m", "antiphon.cli", "serve", "--port"]
    procs = [
        subprocess.Popen([*serve, str(port)], env=env, cwd=REPO)
        for port, env in ((open_port, open_env), (secured_port, secured_env))
    ]
    try:
        servers = MatrixServers(
            f"127.0.0.1:{open_port}", f"127.0.0.1:{secured_port}", keys_file, _speech_wav(scratch / "speech.wav")
        )
        started = time.monotonic()
        for proc, address in zip(procs, (servers.address, servers.secured_address), strict=True):
            eventually_sync(
                lambda p=proc, a=address: p.poll() is not None or _serving(a),  # type: ignore[misc]
                timeout_s=START_BOUND_S - (time.monotonic() - started),
                interval_s=0.1,
                message=f"the server on {address} never served",
            )
            assert proc.poll() is None, f"the server for {address} exited with {proc.returncode}"
        yield servers
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
