"""In process vs through Triton on loopback: what the network hop and Triton add per call.

Starts tritonserver from nvidia-pytriton (as the integration tests do), then runs
the same work both ways: embedding one sentence, and one greedy LLM turn (time to
first token, tokens/s). Usage: python bench/bench_triton.py [--runs N] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "server")]

from tests.integration.triton_server import TritonServer  # noqa: E402

from _table import median, pct, print_table, write_json  # noqa: E402
from antiphon.inference.embedder import OnnxEmbedder  # noqa: E402
from antiphon.inference.llm import LLM, ChatMessage, SamplingOptions  # noqa: E402
from antiphon.inference.onnx_llm import OnnxGenaiLLM  # noqa: E402
from antiphon.inference.triton_embedder import TritonEmbedder  # noqa: E402
from antiphon.inference.triton_llm import TritonLLM  # noqa: E402
from antiphon.inference.triton_repository import prepare_triton_repository  # noqa: E402

SENTENCE = "Barge-in cancels the agent's turn within one frame."
QUESTION = [ChatMessage("user", "Tell me three facts about Paris.")]
OPTIONS = SamplingOptions(greedy=True, max_tokens=64)


async def _embed_ms(embed: OnnxEmbedder | TritonEmbedder, runs: int) -> list[float]:
    await embed.embed([SENTENCE])  # warm up
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await embed.embed([SENTENCE])
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def _llm(llm: LLM, runs: int) -> tuple[list[float], list[float]]:
    ttft, rate = [], []
    for i in range(runs + 1):
        stream = llm.chat(QUESTION, OPTIONS)
        t0 = time.perf_counter()
        first = None
        async for _ in stream:
            first = first or time.perf_counter() - t0
        total = time.perf_counter() - t0
        if i and first is not None:  # the first run warms up
            ttft.append(first * 1000)
            rate.append(stream.stats.output_tokens / total)
    return ttft, rate


async def main(runs: int, json_path: str | None) -> None:
    models = REPO / "var" / "models"
    repo = prepare_triton_repository(models, Path(tempfile.mkdtemp(prefix="bench-triton-")))
    rows: list[list[object]] = []
    data: dict[str, object] = {}
    with TritonServer(repo) as server:
        local_embed = OnnxEmbedder.from_models_dir(models)
        remote_embed = await TritonEmbedder.open(server.url, models_dir=models)
        local_llm = await OnnxGenaiLLM.open(models, threads=2, context_tokens=8192)
        remote_llm = await TritonLLM.open(server.url, models)
        try:
            for name, embedder in (("in process", local_embed), ("triton", remote_embed)):
                ms = await _embed_ms(embedder, runs * 10)
                rows.append([f"embed 1 sentence, {name}", "ms", median(ms), pct(ms, 95)])
                data[f"embed_{name}"] = ms
            for name, llm in (("in process", local_llm), ("triton", remote_llm)):
                ttft, rate = await _llm(llm, runs)
                rows.append([f"LLM first token, {name}", "ms", median(ttft), pct(ttft, 95)])
                rows.append([f"LLM decode, {name}", "tokens/s", median(rate), pct(rate, 5)])
                data[f"llm_{name}"] = {"ttft_ms": ttft, "tokens_per_s": rate}
        finally:
            await local_embed.aclose()
            await remote_embed.aclose()
            await local_llm.aclose()
            await remote_llm.aclose()
    print_table("In process vs Triton (loopback, CPU)", ["what", "unit", "median", "p95 (p5 for rates)"], rows)
    write_json(json_path, data)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.json))
