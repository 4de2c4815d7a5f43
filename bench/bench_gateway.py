"""What the gateway (authentication, RBAC, rate limits, metering) adds per call and per streamed message.

    python bench/bench_gateway.py [--calls 2000] [--streams 20] [--tokens 200] [--json out.json]

One in-process server per configuration, on loopback, with a scripted model (no
inference cost), driven by one client in the same process:

  off         no interceptor at all (the baseline)
  none        the gateway in auth.mode = "none" (embedded principal; limits unlimited)
  key         auth.mode = "required", an API key, RBAC, request + stream limits, metering
  jwt         as key, with an HS256 JWT (verified once, then remembered until it expires)
  off+redis   baseline with Redis sessions (a redis-server started on a free port)
  key+redis   as key, with the key store, buckets and ledger in Redis (one Lua script per check)

Columns: client-observed unary latency (Admin.ListModels), the gateway's own admission time
measured inside the server (authenticate + RBAC + limits + budget + stream slot), and the time
between streamed agent_text messages of a Send turn. "added" is the difference to the
baseline of the same store (off, or off+redis). Not asserted; the goal is p99 <= 0.5 ms in process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).parent))
from _table import median, pct, print_table, write_json
from antiphon.app import App
from antiphon.config import Settings, load_settings
from antiphon.gateway.keys import new_key
from antiphon.inference.llm import (
    LLM,
    ChatMessage,
    FinishReason,
    GenerationStats,
    LLMStream,
    ModelDescription,
    SamplingOptions,
)
from antiphon.v1 import admin_pb2, admin_pb2_grpc, conversation_pb2, conversation_pb2_grpc

HS_SECRET = "bench-secret-0123456789abcdef-0123456789"


class ScriptedLLM(LLM):
    """Answers every prompt with ``tokens`` one-character deltas, yielding to the loop between them."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    @property
    def description(self) -> ModelDescription:
        return ModelDescription("scripted", "bench", "", "none", 8192)

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(len(m.content) // 4 + 4 for m in messages)

    def chat(self, messages: Sequence[ChatMessage], options: SamplingOptions) -> LLMStream:
        return _Stream(min(self.tokens, options.max_tokens), self.count_tokens(messages))

    async def aclose(self) -> None:
        return None


class _Stream(LLMStream):
    def __init__(self, n: int, prompt_tokens: int) -> None:
        self.stats = GenerationStats(input_tokens=prompt_tokens)
        self._n = n
        self._gen: AsyncGenerator[str, None] | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        if self._gen is None:
            self._gen = self._run()
        return self._gen

    async def _run(self) -> AsyncGenerator[str, None]:
        for _ in range(self._n):
            await asyncio.sleep(0)
            self.stats.output_tokens += 1
            yield "x"
        self.stats.finish_reason = FinishReason.COMPLETED

    async def aclose(self) -> None:
        if self.stats.finish_reason is None:
            self.stats.finish_reason = FinishReason.CANCELLED
        if self._gen is not None:
            await self._gen.aclose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Redis:
    def __init__(self, data_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (make redis-server)")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=data_dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.01)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def settings_for(config: str, scratch: Path, redis: Redis | None) -> Settings:
    env = {
        "ANTIPHON_SERVER_PORT": "0",
        "ANTIPHON_TELEMETRY_METRICS_PORT": "0",
        "ANTIPHON_MODELS_DIR": "/nonexistent",
        "ANTIPHON_TOOLS_DIR": "",
        "ANTIPHON_TOOLS_STORAGE_DIR": str(scratch / "tools"),
        "ANTIPHON_TOOLS_CACHE_DIR": str(scratch / "tools-cache"),
        "ANTIPHON_AUTH_KEYS_FILE": str(scratch / f"keys-{config}.json"),
        "ANTIPHON_LOG_LEVEL": "warning",
    }
    if config.endswith("+redis"):
        assert redis is not None
        env |= {
            "ANTIPHON_CONTEXT_SESSIONS": "redis",
            "ANTIPHON_CONTEXT_REDIS_URL": redis.url,
            "ANTIPHON_CONTEXT_REDIS_PREFIX": f"bench-{config.replace('+', '-')}",
        }
    if config.startswith(("key", "jwt")):
        env |= {
            "ANTIPHON_AUTH_MODE": "required",
            "ANTIPHON_AUTH_JWT_HS256_SECRET": HS_SECRET,
            "ANTIPHON_AUTH_JWT_ISSUER": "bench",
            "ANTIPHON_AUTH_JWT_AUDIENCE": "antiphon",
            # Limits on (so every call runs the bucket check) but high enough never to refuse.
            "ANTIPHON_LIMITS_TENANT_REQUESTS_PER_S": "1000000",
            "ANTIPHON_LIMITS_KEY_REQUESTS_PER_S": "1000000",
            "ANTIPHON_LIMITS_TENANT_STREAMS": "1000",
            "ANTIPHON_LIMITS_KEY_STREAMS": "1000",
            "ANTIPHON_LIMITS_TENANT_LLM_TOKENS_PER_MIN": "1000000000",
            "ANTIPHON_LIMITS_MONTHLY_BUDGET": "1000000",
        }
    return load_settings(None, env)


async def metadata_for(config: str, app: App) -> tuple[tuple[str, str], ...]:
    if config.startswith("key"):
        text, record = new_key("bench", ["admin"])
        await app.gateway.keys.add(record)
        return (("x-api-key", text),)
    if config.startswith("jwt"):
        import jwt

        claims: dict[str, Any] = {
            "sub": "bench",
            "tenant": "bench",
            "roles": ["admin"],
            "iss": "bench",
            "aud": "antiphon",
        }
        claims["exp"] = int(time.time()) + 3600
        return (("authorization", f"Bearer {jwt.encode(claims, HS_SECRET, algorithm='HS256')}"),)
    return ()


_GRPC_SERVER = grpc.aio.server


def _server_without_interceptors(*args: Any, **kwargs: Any) -> Any:
    """grpc.aio.server, minus interceptors: the "off" baseline."""
    kwargs.pop("interceptors", None)
    return _GRPC_SERVER(*args, **kwargs)


async def run_config(config: str, args: argparse.Namespace, scratch: Path, redis: Redis | None) -> dict[str, Any]:
    settings = settings_for(config, scratch, redis)
    app = App(settings, llm=ScriptedLLM(args.tokens))
    if config.startswith("off"):
        grpc.aio.server = _server_without_interceptors
    try:
        await app.start()
    finally:
        grpc.aio.server = _GRPC_SERVER
    admit_ns: list[int] = []
    timed_admit = app.gateway.interceptor._admit

    async def admit(*a: Any) -> Any:
        t0 = time.perf_counter_ns()
        try:
            return await timed_admit(*a)
        finally:
            admit_ns.append(time.perf_counter_ns() - t0)

    app.gateway.interceptor._admit = admit  # type: ignore[method-assign,assignment]  # timing probe, bench only
    md = await metadata_for(config, app)
    unary_us: list[float] = []
    gaps_us: list[float] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            conv = conversation_pb2_grpc.ConversationStub(channel)
            request = admin_pb2.ListModelsRequest()
            for i in range(args.calls + 200):
                t0 = time.perf_counter_ns()
                await admin.ListModels(request, metadata=md)
                if i >= 200:  # warm-up: connection, caches, first Lua load
                    unary_us.append((time.perf_counter_ns() - t0) / 1000)
            for s in range(args.streams + 2):
                last = None
                async for event in conv.Send(conversation_pb2.TextRequest(text="go"), metadata=md):
                    now = time.perf_counter_ns()
                    if event.HasField("agent_text"):
                        if last is not None and s >= 2:
                            gaps_us.append((now - last) / 1000)
                        last = now
    finally:
        await app.stop(grace_s=1)
    admit_us = [n / 1000 for n in admit_ns]
    return {"config": config, "unary_us": unary_us, "gaps_us": gaps_us, "admit_us": admit_us}


async def per_message_wrapper_cost(n: int) -> tuple[list[float], list[float]]:
    """Per-message time of an async generator consumed directly vs through the gateway's stream wrapper."""
    from prometheus_client import CollectorRegistry

    from antiphon.gateway.interceptor import build_gateway

    gateway = build_gateway(
        load_settings(None, {"ANTIPHON_AUTH_KEYS_FILE": "/nonexistent/keys.json"}), CollectorRegistry()
    )

    async def source() -> AsyncIterator[int]:
        for i in range(n):
            yield i

    async def timed(it: AsyncIterator[int]) -> list[float]:
        out = []
        t0 = time.perf_counter_ns()
        async for _ in it:
            t1 = time.perf_counter_ns()
            out.append((t1 - t0) / 1000)
            t0 = t1
        return out

    direct = await timed(source())
    wrapped = await timed(gateway.interceptor._bounded(source(), None))
    return direct, wrapped


async def per_request_decode_cost(n: int) -> tuple[list[float], list[float]]:
    """Per-message time of a request stream decoded as gRPC's receiver does vs by the gateway after admission."""
    from antiphon.gateway.interceptor import _Body, _DecodedRequests
    from antiphon.v1 import events_pb2

    raw = events_pb2.ClientEvent(text=events_pb2.TextInput(content="hello there " * 4)).SerializeToString()

    async def decoded() -> AsyncIterator[Any]:
        for _ in range(n):
            yield events_pb2.ClientEvent.FromString(raw)

    async def undecoded() -> AsyncIterator[bytes]:
        for _ in range(n):
            yield raw

    async def timed(it: AsyncIterator[Any]) -> list[float]:
        out = []
        t0 = time.perf_counter_ns()
        async for _ in it:
            t1 = time.perf_counter_ns()
            out.append((t1 - t0) / 1000)
            t0 = t1
        return out

    in_grpc = await timed(decoded())
    in_gateway = await timed(_DecodedRequests(undecoded(), _Body(events_pb2.ClientEvent.FromString)))
    return in_grpc, in_gateway


def _row(name: str, r: dict[str, Any], base: dict[str, Any] | None) -> list[Any]:
    u, g, a = r["unary_us"], r["gaps_us"], r["admit_us"]
    row = [name, median(u), pct(u, 99), median(g), pct(g, 99)]
    if base is None:
        row += ["-", "-", "-", "-"]
    else:
        bu, bg = base["unary_us"], base["gaps_us"]
        row += [median(u) - median(bu), pct(u, 99) - pct(bu, 99), median(g) - median(bg), pct(g, 99) - pct(bg, 99)]
    row += [median(a) if a else "-", pct(a, 99) if a else "-"]
    return row


async def main_async(args: argparse.Namespace) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    redis = None if args.no_redis else Redis(scratch)
    configs = ["off", "none", "key", "jwt"] + ([] if redis is None else ["off+redis", "key+redis"])
    results: dict[str, dict[str, Any]] = {}
    try:
        for config in configs:
            results[config] = await run_config(config, args, scratch, redis)
            print(f"{config}: done", file=sys.stderr)
    finally:
        if redis is not None:
            redis.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    rows = []
    for config in configs:
        base = None if config.startswith("off") else results["off+redis" if config.endswith("+redis") else "off"]
        rows.append(_row(config, results[config], base))
    print_table(
        f"Gateway cost, µs (unary: {args.calls} x Admin.ListModels; stream: {args.streams} x Send of {args.tokens} "
        f"messages; one client, {os.cpu_count()} cores)",
        [
            "config",
            "unary p50",
            "unary p99",
            "msg gap p50",
            "msg gap p99",
            "added unary p50",
            "added unary p99",
            "added msg p50",
            "added msg p99",
            "admit p50",
            "admit p99",
        ],
        rows,
    )
    direct, wrapped = await per_message_wrapper_cost(args.tokens * 100)
    in_grpc, in_gateway = await per_request_decode_cost(args.tokens * 100)
    print_table(
        "Per streamed message, the stream wrappers alone (max_stream_s timer per response; "
        "request decoding after admission), µs",
        ["path", "p50", "p99", "added p50", "added p99"],
        [
            ["direct", median(direct), pct(direct, 99), "-", "-"],
            [
                "gateway wrapper",
                median(wrapped),
                pct(wrapped, 99),
                median(wrapped) - median(direct),
                pct(wrapped, 99) - pct(direct, 99),
            ],
            ["request decoded as gRPC does", median(in_grpc), pct(in_grpc, 99), "-", "-"],
            [
                "request decoded by gateway",
                median(in_gateway),
                pct(in_gateway, 99),
                median(in_gateway) - median(in_grpc),
                pct(in_gateway, 99) - pct(in_grpc, 99),
            ],
        ],
    )
    summary = {
        c: {
            "unary_p50_us": median(r["unary_us"]),
            "unary_p99_us": pct(r["unary_us"], 99),
            "msg_gap_p50_us": median(r["gaps_us"]),
            "msg_gap_p99_us": pct(r["gaps_us"], 99),
            "admit_p50_us": median(r["admit_us"]) if r["admit_us"] else None,
            "admit_p99_us": pct(r["admit_us"], 99) if r["admit_us"] else None,
        }
        for c, r in results.items()
    }
    summary["wrapper_per_message"] = {
        "direct_p50_us": median(direct),
        "direct_p99_us": pct(direct, 99),
        "wrapped_p50_us": median(wrapped),
        "wrapped_p99_us": pct(wrapped, 99),
    }
    summary["request_decoding_per_message"] = {
        "grpc_p50_us": median(in_grpc),
        "grpc_p99_us": pct(in_grpc, 99),
        "gateway_p50_us": median(in_gateway),
        "gateway_p99_us": pct(in_gateway, 99),
    }
    write_json(args.json, summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis configurations")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
