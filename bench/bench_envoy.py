"""Workers behind Envoy (the shipped config on loopback): what Envoy adds, and how fast a session
comes back after its worker is killed.

    python bench/bench_envoy.py [--n 1000] [--kills 10] [--json out.json] [--models-dir var/models]

(a) Added latency, direct vs through Envoy, alternating in the same run, n each after n/10 warm-ups:
    stream message  one message on an open Converse stream to the event it causes (an empty text,
                    answered at once with an error event: no model work)
    unary call      Tools/ListTools
    One worker (voice off), one Envoy worker thread.
(b) Resume after SIGKILL: three workers with Redis sessions; a Python SDK resuming conversation
    (antiphon_client.resume) on one session; its worker is killed while the stream is open and the
    time from the kill to the resumed session_started is taken. A replacement worker is started
    after each kill. The floor is the dead worker's heartbeat TTL (2 s): until it lapses the lease
    is held and the SDK's retries get FAILED_PRECONDITION.
Informational only: nothing here is a pass/fail threshold.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the Envoy and Redis helpers
from tests.envoy_proxy import EnvoyProxy
from tests.redis_server import RedisServer, free_port

from _table import pct, print_table, write_json
from antiphon.v1 import conversation_pb2_grpc, tools_pb2, tools_pb2_grpc
from antiphon.v1 import events_pb2 as pb
from antiphon_client import AntiphonClient

REPO = Path(__file__).resolve().parents[1]


class Worker:
    def __init__(self, models_dir: str, scratch: Path, **settings: str) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        env = dict(
            os.environ,
            ANTIPHON_LOG_LEVEL="warning",
            ANTIPHON_TELEMETRY_METRICS_PORT=str(self.metrics_port),
            ANTIPHON_TOOLS_STORAGE_DIR=str(scratch / f"tools-{self.port}"),
            ANTIPHON_CONTEXT_MEMORY_DIR="",
            **{f"ANTIPHON_{k}": v for k, v in settings.items()},
        )
        argv = [sys.executable, "-m", "antiphon.cli", "serve", "--port", str(self.port), "--models-dir", models_dir]
        with (scratch / f"worker-{self.port}.log").open("wb") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_serving(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            grpc.channel_ready_future(channel).result(timeout=180)

    def active_streams(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith("antiphon_active_streams "):
                    return int(float(line.split()[1]))
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _stream_message(address: str) -> tuple[grpc.aio.Channel, grpc.aio.StreamStreamCall]:
    channel = grpc.aio.insecure_channel(address)
    conv = conversation_pb2_grpc.ConversationStub(channel).Converse()
    await conv.write(pb.ClientEvent(session_config=pb.SessionConfig()))
    await conv.read()
    return channel, conv


async def added_latency(address: str, envoy: str, n: int) -> dict[str, dict[str, list[float]]]:
    """Interleaved: each round measures one direct and one proxied sample of each kind."""
    samples: dict[str, dict[str, list[float]]] = {p: {"stream": [], "unary": []} for p in ("direct", "envoy")}
    opened = {p: await _stream_message(a) for p, a in (("direct", address), ("envoy", envoy))}
    tools = {p: tools_pb2_grpc.ToolsStub(ch) for p, (ch, _) in opened.items()}
    warm = n // 10
    for i in range(warm + n):
        for path, (_, conv) in opened.items():
            t0 = time.perf_counter()
            await conv.write(pb.ClientEvent(text=pb.TextInput(content=" ")))
            await conv.read()
            t1 = time.perf_counter()
            await tools[path].ListTools(tools_pb2.ListToolsRequest())
            t2 = time.perf_counter()
            if i >= warm:
                samples[path]["stream"].append((t1 - t0) * 1e6)
                samples[path]["unary"].append((t2 - t1) * 1e6)
    for channel, conv in opened.values():
        conv.cancel()
        await channel.close()
    return samples


async def resume_after_kill(models_dir: str, scratch: Path, kills: int) -> list[float]:
    redis = RedisServer(scratch / "redis")
    redis.start()
    settings = {
        "CONTEXT_SESSIONS": "redis",
        "CONTEXT_REDIS_URL": redis.url,
        "CONTEXT_REDIS_PREFIX": f"b{uuid.uuid4().hex[:6]}",
        "VOICE_ENABLED": "off",
    }
    workers = [Worker(models_dir, scratch, **settings) for _ in range(3)]
    for w in workers:
        w.wait_serving()
    envoy = EnvoyProxy([("127.0.0.1", w.port) for w in workers], dynamic=True)
    times: list[float] = []
    try:
        envoy.start()
        await envoy.wait_ready_async(healthy_hosts=3)
        async with AntiphonClient(envoy.address) as client:
            conv = await client.resuming_conversation(session_id="resume")
            events = conv.events()
            for _ in range(kills):
                (holder,) = [w for w in workers if w.proc.poll() is None and w.active_streams() > 0]
                holder.proc.kill()
                killed = time.perf_counter()
                async for event in events:
                    if event.WhichOneof("event") == "session_started":
                        times.append(time.perf_counter() - killed)
                        break
                holder.proc.wait()
                workers.remove(holder)
                replacement = Worker(models_dir, scratch, **settings)
                replacement.wait_serving()
                workers.append(replacement)
                envoy.set_workers([("127.0.0.1", w.port) for w in workers])
                await envoy.wait_ready_async(healthy_hosts=3)
            conv.cancel()
    finally:
        for w in workers:
            w.stop()
        envoy.stop()
        redis.stop()
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--json")
    parser.add_argument("--models-dir", default="var/models")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-envoy-"))

    worker = Worker(args.models_dir, scratch, VOICE_ENABLED="off")
    try:
        worker.wait_serving()
        with EnvoyProxy([("127.0.0.1", worker.port)], healthy_hosts=1) as envoy:
            samples = asyncio.run(added_latency(worker.address, envoy.address, args.n))
    finally:
        worker.stop()
    rows = []
    for kind, label in (("stream", "stream message"), ("unary", "unary call (ListTools)")):
        d, e = samples["direct"][kind], samples["envoy"][kind]
        rows.append(
            [label, pct(d, 50), pct(d, 99), pct(e, 50), pct(e, 99), pct(e, 50) - pct(d, 50), pct(e, 50) / pct(d, 50)]
        )
    header = ["call", "direct p50 µs", "p99", "envoy p50 µs", "p99", "+p50 µs", "ratio"]
    print_table(f"Envoy's added latency, n={args.n} each, interleaved (loopback, one worker)", header, rows)

    times = asyncio.run(resume_after_kill(args.models_dir, scratch, args.kills))
    print_table(
        f"resume after SIGKILL of the session's worker, {len(times)} kills (3 workers, Envoy, Redis)",
        ["p50 s", "max s", "min s"],
        [[pct(times, 50), max(times), min(times)]],
    )
    write_json(args.json, {"added_latency_us": samples, "resume_s": times})


if __name__ == "__main__":
    main()
