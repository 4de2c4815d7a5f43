"""Server overhead per turn at 1, 4 and 16 concurrent sessions, on the real model.

    python bench/bench_server.py [--models-dir var/models] [--turns 3] [--json out.json]

Starts `antiphon serve` in its own process. For every turn: overhead = what
the client observed (request out -> turn_end in) minus the time the server
spent in the model and waiting for it (model_ms + queue_ms from turn_end).
Fairness: each session's decode rate relative to the others at that level.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _table import median, pct, print_table, write_json
from antiphon.v1 import events_pb2 as pb
from antiphon_client import AntiphonClient

QUESTIONS = ["Name a colour.", "What is two plus two?", "Say hello.", "Name a fruit."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def session(address: str, idx: int, turns: int, max_tokens: int) -> list[dict[str, float]]:
    out = []
    async with AntiphonClient(address) as client:
        sid = f"bench-{idx}-{time.time_ns()}"
        for t in range(turns):
            options = pb.GenerationOptions(max_tokens=max_tokens, greedy=True)
            t0 = time.perf_counter()
            end: pb.TurnEnd | None = None
            # Every session asks the same question each round: equal work, so rates compare fairly.
            async for event in client.send(QUESTIONS[t % len(QUESTIONS)], session_id=sid, generation=options):
                if event.HasField("turn_end"):
                    end = event.turn_end
            wall_ms = (time.perf_counter() - t0) * 1000
            assert end is not None
            out.append(
                {
                    "wall_ms": wall_ms,
                    "model_ms": end.latency.model_ms,
                    "queue_ms": end.latency.queue_ms,
                    "server_total_ms": end.latency.total_ms,
                    "tokens": end.usage.output_tokens,
                    "overhead_ms": wall_ms - end.latency.model_ms - end.latency.queue_ms,
                }
            )
    return out


async def run(address: str, turns: int, max_tokens: int) -> tuple[list[list[object]], dict[str, object]]:
    rows: list[list[object]] = []
    data: dict[str, object] = {}
    for concurrency in (1, 4, 16):
        results = await asyncio.gather(*(session(address, i, turns, max_tokens) for i in range(concurrency)))
        flat = [r for rs in results for r in rs]
        overhead = [r["overhead_ms"] for r in flat]
        in_server = [r["server_total_ms"] - r["model_ms"] - r["queue_ms"] for r in flat]
        rates = [sum(r["tokens"] for r in rs) / (sum(r["wall_ms"] for r in rs) / 1000) for rs in results]
        rows.append(
            [
                concurrency,
                len(flat),
                median([r["wall_ms"] for r in flat]),
                median([r["model_ms"] for r in flat]),
                median(overhead),
                pct(overhead, 99),
                median(in_server),
                min(rates) / max(rates),
            ]
        )
        data[str(concurrency)] = {"turns": flat, "per_session_tok_s": rates}
    return rows, data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", default="var/models")
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--json")
    args = ap.parse_args()
    port = free_port()
    env = dict(os.environ, ANTIPHON_TELEMETRY_METRICS_PORT="0", ANTIPHON_LOG_LEVEL="warning")
    cmd = [sys.executable, "-m", "antiphon.cli", "serve", "--port", str(port), "--models-dir", args.models_dir]
    proc = subprocess.Popen(cmd, env=env)
    try:
        address = f"127.0.0.1:{port}"

        async def go() -> tuple[list[list[object]], dict[str, object]]:
            async with AntiphonClient(address) as client:
                await client.wait_ready(60)
                async for _ in client.send("warm up", generation=pb.GenerationOptions(max_tokens=4)):
                    pass
            return await run(address, args.turns, args.max_tokens)

        rows, data = asyncio.run(go())
    finally:
        proc.terminate()
        proc.wait(30)
    print_table(
        f"Server overhead per turn (Send, greedy, max_tokens={args.max_tokens}, {args.turns} turns per session)",
        [
            "sessions",
            "turns",
            "client ms p50",
            "model ms p50",
            "overhead ms p50",
            "overhead ms p99",
            "in-server ms p50",
            "fairness min/max tok/s",
        ],
        rows,
    )
    write_json(args.json, data)


if __name__ == "__main__":
    main()
