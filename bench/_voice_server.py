"""The voice server of bench_voice_streams.py, in a process of its own pinned to one core.

`App` with the real Silero VAD and ingest path; recognition that hears no words (so no turn
starts and nothing is synthesised) and partial transcripts off: only the ingest path is measured.
The parent drives it over a pipe: "mem" answers (VmRSS, traced heap, tracemalloc overhead), "stop".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import multiprocessing
import os
import tempfile
import time
import tracemalloc
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from antiphon.voice.silero import SileroVad


def proc_stat(pid: int) -> tuple[float, int]:
    """(user+system CPU seconds, VmRSS bytes) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return cpu, rss


def server_main(conn: Connection, core: int | None, trace: bool, log_path: str) -> None:
    """Entry of the server process: App with the real VAD and cheap recognition/synthesis doubles."""
    with open(log_path, "ab") as log:  # the server's logs stay out of the tables; main() points to them
        os.dup2(log.fileno(), 2)
    if core is not None:
        os.sched_setaffinity(0, {core})  # before any thread starts: the pools inherit it
    if trace:
        tracemalloc.start()
    with contextlib.suppress(ImportError):  # `antiphon serve` runs on uvloop when it is installed
        import uvloop

        uvloop.install()
    asyncio.run(_serve(conn, trace))


async def _serve(conn: Connection, trace: bool) -> None:
    from tests.fakes import FakeLLM
    from tests.voice_fakes import ScriptedSTT, ToneTTS

    from antiphon.app import App
    from antiphon.config import load_settings
    from antiphon.logs import configure_logging
    from antiphon.voice.engines import VoiceEngines
    from antiphon.voice.phrase_cache import PhraseCache

    configure_logging("error", "text")  # not the warning that long-term memory is off
    with tempfile.TemporaryDirectory(prefix="antiphon-bench-") as scratch:
        env = {
            "ANTIPHON_SERVER_PORT": "0",
            "ANTIPHON_SERVER_MAX_STREAMS": "4096",
            "ANTIPHON_TELEMETRY_METRICS_PORT": "0",
            "ANTIPHON_MODELS_DIR": "/nonexistent",
            "ANTIPHON_TOOLS_DIR": "",
            "ANTIPHON_TOOLS_STORAGE_DIR": f"{scratch}/tools",
            "ANTIPHON_TOOLS_CACHE_DIR": f"{scratch}/tools-cache",
            "ANTIPHON_CONTEXT_MEMORY_DIR": "",
            "ANTIPHON_AUTH_KEYS_FILE": f"{scratch}/keys.json",
            "ANTIPHON_VOICE_ENABLED": "off",  # no model loading: the engines are injected
            "ANTIPHON_VOICE_PARTIAL_INTERVAL_MS": "0",  # recognition is not part of the ingest path
        }
        engines = VoiceEngines(
            vad=SileroVad(),
            stt=ScriptedSTT(""),  # hears no words: no turn, no synthesis
            tts=ToneTTS(),
            cache=PhraseCache(max_bytes=1 << 20),
            stt_pool=concurrent.futures.ThreadPoolExecutor(1),
            tts_pool=concurrent.futures.ThreadPoolExecutor(1),
        )
        app = App(load_settings(None, env), llm=FakeLLM(), voice=engines)
        await app.start()
        conn.send(app.port)
        loop = asyncio.get_running_loop()
        while (command := await loop.run_in_executor(None, conn.recv)) != "stop":
            if command == "mem":
                gc.collect()
                traced = tracemalloc.get_traced_memory()[0] if trace else 0
                overhead = tracemalloc.get_tracemalloc_memory() if trace else 0
                conn.send((proc_stat(os.getpid())[1], traced, overhead))
        await app.stop(grace_s=1.0)


@contextlib.contextmanager
def server(core: int | None, log_path: str, trace: bool = False) -> Any:
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold gRPC state
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=server_main, args=(child, core, trace, log_path), daemon=True)
    proc.start()
    try:
        deadline = time.monotonic() + 120
        while not parent.poll(0.2):
            if not proc.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server process did not start")
        port = parent.recv()
        yield proc.pid, f"127.0.0.1:{port}", parent
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        proc.join(15)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
