"""Two server processes, one Redis: documents and sessions written through one are seen through the other."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from antiphon.inference.prepare_embedder import is_embedder_prepared
from antiphon.v1 import context_pb2, context_pb2_grpc
from antiphon_client import AntiphonClient
from tests.eventually import eventually
from tests.integration.conftest import models_dir, require_model
from tests.integration.server_process import serve
from tests.redis_server import RedisServer

CHANGE_LOG_BOUND_S = 5.0


async def _serve(redis: RedisServer) -> tuple[asyncio.subprocess.Process, str]:
    return await serve(CONTEXT_SESSIONS="redis", CONTEXT_REDIS_URL=redis.url)


@pytest.fixture
async def workers(redis_server: RedisServer) -> AsyncIterator[list[str]]:
    require_model()
    if not is_embedder_prepared(models_dir()):
        pytest.fail("the embedder is not prepared: run `make models`")
    started = [await _serve(redis_server) for _ in range(2)]
    try:
        for _, address in started:
            async with AntiphonClient(address) as client:
                await client.wait_ready(120)
        yield [address for _, address in started]
    finally:
        for proc, _ in started:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)


async def test_document_written_on_one_worker_is_found_on_the_other(workers: list[str]) -> None:
    a, b = (grpc.aio.insecure_channel(address) for address in workers)
    try:
        doc = context_pb2.Document(
            id=f"doc-{time.time_ns()}",
            text="The Antiphon support line is open from 8 am to 6 pm on weekdays.",
            acl_labels=["public"],
        )
        await context_pb2_grpc.ContextStub(a).PutDocuments(context_pb2.PutDocumentsRequest(documents=[doc]))
        written = time.monotonic()
        search = context_pb2.SearchRequest(query="When is the support line open?", top_k=3)

        async def found_on(channel: grpc.aio.Channel) -> bool:
            reply = await context_pb2_grpc.ContextStub(channel).Search(search)
            return any(h.document.metadata.get("document_id") == doc.id for h in reply.hits)

        await eventually(
            lambda: found_on(b),
            timeout_s=CHANGE_LOG_BOUND_S,
            interval_s=0.02,
            message="worker b never saw the document",
        )
        delay = time.monotonic() - written
        print(f"change log: visible on the other worker after {delay * 1000:.0f} ms")
        # A delete through b disappears from a as well.
        await context_pb2_grpc.ContextStub(b).DeleteDocuments(context_pb2.DeleteDocumentsRequest(ids=[doc.id]))

        async def gone_from_a() -> bool:
            return not await found_on(a)

        await eventually(
            gone_from_a, timeout_s=CHANGE_LOG_BOUND_S, interval_s=0.02, message="worker a kept a deleted document"
        )
    finally:
        await a.close()
        await b.close()


async def test_session_continues_on_the_other_worker(workers: list[str]) -> None:
    session = f"moving-{time.time_ns()}"
    async with AntiphonClient(workers[0]) as client:
        conv = await client.conversation(session_id=session)
        await conv.turn("My name is Ada.")
        await conv.end()
    async with AntiphonClient(workers[1]) as client:
        conv = await client.conversation(session_id=session)
        assert conv.started is not None
        assert conv.started.history_turns == 2
        await conv.end()
