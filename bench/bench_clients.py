"""Client round trips per language, against the Python SDK, on one server in the same run.

    python bench/bench_clients.py [--n 300] [--json out.json] [--models-dir var/models]

Two round trips, each measured --n times after a tenth as many warm-ups, by each client in turn
(Python SDK on grpc.aio, Go on grpc-go, TypeScript on Connect's gRPC transport):
  Send → first event    a new stream per call; the first event (session_started) comes before any
                        model work, so this is the client, HTTP/2 and the server's admission path
  Converse message      one message on an open stream to the event it causes (an empty text, which
                        the server answers at once with an error event: no model either)
The server runs in its own process with voice off; clients run one at a time. Informational only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).parent))
from _table import pct, print_table, write_json
from antiphon.v1 import conversation_pb2, conversation_pb2_grpc
from antiphon.v1 import events_pb2 as pb

REPO = Path(__file__).resolve().parents[1]
GO_LINK = REPO / "build" / "gopath" / "src" / "github.com" / "antiphon" / "antiphon"


async def python_client(address: str, n: int) -> dict[str, list[float]]:
    warm = n // 10
    send: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = conversation_pb2_grpc.ConversationStub(channel)
        for i in range(warm + n):
            t0 = time.perf_counter()
            call = stub.Send(conversation_pb2.TextRequest(text="Hello"))
            await call.read()
            elapsed = (time.perf_counter() - t0) * 1e6
            call.cancel()  # the first event is all this measures
            if i >= warm:
                send.append(elapsed)
        stream: list[float] = []
        conv = stub.Converse()
        await conv.write(pb.ClientEvent(session_config=pb.SessionConfig()))
        await conv.read()
        for i in range(warm + n):
            t0 = time.perf_counter()
            await conv.write(pb.ClientEvent(text=pb.TextInput(content=" ")))
            await conv.read()
            if i >= warm:
                stream.append((time.perf_counter() - t0) * 1e6)
        await conv.done_writing()
        while await conv.read() is not grpc.aio.EOF:
            pass
    return {"send_first_event_us": send, "converse_message_us": stream}


def _external(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict[str, list[float]]:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=True, timeout=600)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def go_client(address: str, n: int) -> dict[str, list[float]]:
    env = {
        **os.environ,
        "GOPATH": f"{REPO / 'build' / 'gopath'}:/usr/share/gocode",
        "GO111MODULE": "off",
        "GOCACHE": str(REPO / "build" / "go-cache"),
    }
    binary = REPO / "build" / "antiphon-bench"
    build = ["go", "build", "-o", str(binary), "./clients/go/cmd/antiphon-bench"]
    subprocess.run(build, cwd=GO_LINK, env=env, check=True)
    return _external([str(binary), "-addr", address, "-n", str(n)], REPO)


def ts_client(address: str, n: int) -> dict[str, list[float]]:
    return _external(["node", "dist/examples/bench.js", address, str(n)], REPO / "clients" / "ts")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(models_dir: str, scratch: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTIPHON_")}
    env.update(
        ANTIPHON_LOG_LEVEL="warning",
        ANTIPHON_TELEMETRY_METRICS_PORT="0",
        ANTIPHON_VOICE_ENABLED="off",
        ANTIPHON_TOOLS_DIR="",
        ANTIPHON_TOOLS_STORAGE_DIR=str(scratch / "tools"),
        ANTIPHON_TOOLS_CACHE_DIR=str(scratch / "tools-cache"),
        ANTIPHON_CONTEXT_MEMORY_DIR="",
        ANTIPHON_AUTH_KEYS_FILE=str(scratch / "keys.json"),
        ANTIPHON_GENERATION_MAX_TOKENS="1",
    )
    cmd = [sys.executable, "-m", "antiphon.cli", "serve", "--port", str(port), "--models-dir", models_dir]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    address = f"127.0.0.1:{port}"
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=120)
    return proc, address


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--json")
    parser.add_argument("--models-dir", default="var/models")
    args = parser.parse_args()
    proc, address = serve(args.models_dir, Path(tempfile.mkdtemp(prefix="bench-clients-")))
    try:
        results = {
            "python": asyncio.run(python_client(address, args.n)),
            "go": go_client(address, args.n),
            "typescript": ts_client(address, args.n),
        }
    finally:
        proc.terminate()
        proc.wait(30)
    rows = []
    base = results["python"]
    for name, r in results.items():
        row: list[object] = [name]
        for key in ("send_first_event_us", "converse_message_us"):
            p99 = pct(r[key], 99)
            row += [pct(r[key], 50), p99, p99 - pct(base[key], 99)]
        rows.append(row)
    header = ["client", "Send→1st p50 µs", "p99 µs", "Δp99 vs py", "Converse msg p50 µs", "p99 µs", "Δp99 vs py"]
    print_table(f"client round trips, n={args.n} each (loopback, one server process)", header, rows)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
