"""What derived-content labels cost a turn: ContextBuilder.build() with and without labelled history
and retrieval, against the plain turn (no retrieval, nothing labelled) in the same run.

    python bench/bench_context.py [--json out.json] [--repeats 201] [--turns 20]

The model's tokenizer is replaced by a word count (cached per turn, as the builder caches the real
one), so the figures are the builder's own work: history filtering, label merging, prompt assembly.
Informational only: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _table import median, pct, print_table, write_json
from antiphon.context.builder import ContextBuilder, ContextLimits, RetrievedMemory
from antiphon.context.derived import merge, readable
from antiphon.context.sessions import MemorySessionStore, TurnRecord
from antiphon.gateway.principal import Principal
from antiphon.inference.llm import LLM, ChatMessage, LLMStream, ModelDescription, SamplingOptions

HR = (("hr",),)
READER = Principal("t", "ann", frozenset({"member"}), frozenset({"public", "hr"}))
OUTSIDER = Principal("t", "ann", frozenset({"member"}), frozenset({"public"}))


class WordCountLLM(LLM):
    @property
    def description(self) -> ModelDescription:
        return ModelDescription("words", "bench", "", "none", 8192)

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(len(m.content.split()) + 4 for m in messages) + 3

    def chat(self, messages: Sequence[ChatMessage], options: SamplingOptions) -> LLMStream:
        raise RuntimeError("the context builder only counts tokens")

    async def aclose(self) -> None:
        return None


class StaticRetriever:
    def __init__(self, memories: list[RetrievedMemory]) -> None:
        self.memories = memories

    async def retrieve(self, principal: Principal, query: str, top_k: int, min_score: float) -> list[RetrievedMemory]:
        return self.memories


async def _session(turns: int, labelled: bool) -> MemorySessionStore:
    store = MemorySessionStore()
    await store.create("t", "s", "assistant", "ann")
    for i in range(turns // 2):
        acl = HR if labelled and i % 2 else ()
        answer = TurnRecord("assistant", f"answer number {i} with a few more words in it", acl=acl)
        await store.append_turns("t", "s", [TurnRecord("user", f"question number {i}?"), answer], "ann")
    return store


async def _time_build(builder: ContextBuilder, principal: Principal, repeats: int) -> list[float]:
    for _ in range(20):
        await builder.build(principal, "s", "You are helpful.", "What now?", 256)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        await builder.build(principal, "s", "You are helpful.", "What now?", 256)
        out.append((time.perf_counter() - t0) * 1e6)
    return out


async def run(repeats: int, turns: int) -> list[list[object]]:
    llm, limits = WordCountLLM(), ContextLimits(context_tokens=8192)
    memories = [RetrievedMemory(f"m{i}", f"memory text {i} about the topic", 0.9, frozenset({"hr"})) for i in range(4)]
    cases = [
        ("no retrieval, nothing labelled (baseline)", False, None, READER),
        ("no retrieval, half the answers labelled", True, None, READER),
        ("same, reader without the label (withheld)", True, None, OUTSIDER),
        ("4 labelled memories, labelled history", True, StaticRetriever(memories), READER),
    ]
    rows: list[list[object]] = []
    base = 0.0
    for name, labelled, retriever, principal in cases:
        builder = ContextBuilder(llm, await _session(turns, labelled), limits, retriever)
        times = await _time_build(builder, principal, repeats)
        p50 = median(times)
        base = base or p50
        rows.append([name, p50, pct(times, 99), p50 - base])
    return rows


def micro(repeats: int) -> list[list[object]]:
    acls = [HR, (("eng", "public"),), ()] * 8
    rows: list[list[object]] = []
    for name, fn in (("merge() of 24 turn ACLs", lambda: merge(*acls)), ("readable()", lambda: readable(READER, HR))):
        n = 2000
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times.append((time.perf_counter() - t0) / n * 1e6)
        rows.append([name, median(times), pct(times, 99), ""])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    parser.add_argument("--repeats", type=int, default=201)
    parser.add_argument("--turns", type=int, default=20)
    args = parser.parse_args()
    rows = asyncio.run(run(args.repeats, args.turns))
    header = ["case", "p50 µs", "p99 µs", "+µs vs baseline"]
    print(f"python {platform.python_version()} on {platform.machine()}; {args.turns} history turns")
    print_table("ContextBuilder.build() per turn", header, rows)
    small = micro(args.repeats // 4 or 1)
    print_table("label helpers, per call", header, small)
    write_json(args.json, {"build": rows, "helpers": small})


if __name__ == "__main__":
    main()
