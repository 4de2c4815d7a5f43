"""LLM backend: time to first token and decode speed, ours (worker process) vs a bare in-process loop.

    python bench/bench_llm.py [--models-dir var/models] [--runs 5] [--json out.json]

The bare loop is what a user would write by hand; the ratio shows what the
backend's executor hand-off, stop-string handling and stats cost.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _table import median, print_table, write_json
from antiphon.inference.chat_template import render_chatml
from antiphon.inference.llm import ChatMessage, SamplingOptions
from antiphon.inference.onnx_llm import OnnxGenaiLLM
from antiphon.inference.prepare_llm import llm_model_dir

FILLER = "The quick brown fox jumps over the lazy dog near the river bank. "


def prompt_of(llm: OnnxGenaiLLM, tokens: int) -> list[ChatMessage]:
    """A user message padded until the whole prompt is about `tokens` long."""
    text = "Summarise this in one line: "
    while llm.count_tokens([ChatMessage("user", text + FILLER)]) <= tokens:
        text += FILLER
    return [ChatMessage("user", text)]


class Bare:
    """onnxruntime-genai loaded in this process, driven by hand."""

    def __init__(self, model_dir: Path) -> None:
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(str(model_dir))
        self.tokenizer = og.Tokenizer(self.model)


def bare_loop(bare: Bare, messages: list[ChatMessage], new_tokens: int) -> tuple[float, float]:
    og = bare.og
    t0 = time.perf_counter()
    tokens = bare.tokenizer.encode(render_chatml(messages))
    params = og.GeneratorParams(bare.model)
    params.set_search_options(max_length=len(tokens) + new_tokens, do_sample=False)
    gen = og.Generator(bare.model, params)
    gen.append_tokens(tokens)
    stream = bare.tokenizer.create_stream()
    first = 0.0
    n = 0
    while not gen.is_done():
        gen.generate_next_token()
        stream.decode(int(gen.get_next_tokens()[0]))
        n += 1
        if n == 1:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return first, (n - 1) / (total - first) if n > 1 else 0.0


async def ours(llm: OnnxGenaiLLM, messages: list[ChatMessage], new_tokens: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    stream = llm.chat(messages, SamplingOptions(max_tokens=new_tokens, greedy=True))
    first = 0.0
    first_tokens = 0
    async for _ in stream:
        if not first:
            first = time.perf_counter() - t0
            first_tokens = stream.stats.output_tokens
    total = time.perf_counter() - t0
    decoded = stream.stats.output_tokens - first_tokens
    return first, decoded / (total - first) if decoded else 0.0


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models-dir", default="var/models")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--json")
    args = ap.parse_args()
    llm = await OnnxGenaiLLM.open(Path(args.models_dir), threads=2, context_tokens=8192)
    bare = Bare(llm_model_dir(Path(args.models_dir)))
    rows, data = [], {}
    for size in (50, 200):
        messages = prompt_of(llm, size)
        await ours(llm, messages, 8)  # warm-up
        bare_runs = [bare_loop(bare, messages, args.new_tokens) for _ in range(args.runs)]
        mine = [await ours(llm, messages, args.new_tokens) for _ in range(args.runs)]
        b_ttft, b_tps = median([x[0] for x in bare_runs]), median([x[1] for x in bare_runs])
        o_ttft, o_tps = median([x[0] for x in mine]), median([x[1] for x in mine])
        rows.append([size, "bare onnxruntime-genai", b_ttft * 1000, b_tps, 1.0])
        rows.append([size, "antiphon OnnxGenaiLLM", o_ttft * 1000, o_tps, o_tps / b_tps])
        data[str(size)] = {
            "bare": {"ttft_ms": b_ttft * 1000, "tok_s": b_tps},
            "ours": {"ttft_ms": o_ttft * 1000, "tok_s": o_tps},
        }
    print_table(
        f"LLM {llm.description.name}, greedy, {args.new_tokens} new tokens, median of {args.runs}",
        ["prompt tokens", "path", "first token ms", "decode tok/s", "tok/s vs bare"],
        rows,
    )
    write_json(args.json, data)
    await llm.aclose()


if __name__ == "__main__":
    asyncio.run(main())
