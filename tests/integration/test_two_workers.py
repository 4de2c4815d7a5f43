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
        while True:
            reply = await context_pb2_grpc.ContextStub(b).Search(search)
            if any(h.document.metadata.get("document_id") == doc.id for h in reply.hits):
                break
            assert time.monotonic() - written < CHANGE_LOG_BOUND_S, "worker b never saw the document"
            await asyncio.sleep(0.02)
        delay = time.monotonic() - written
        print(f"change log: visible on the other worker after {delay * 1000:.0f} ms")
        # A delete through b disappears from a as well.
        await context_pb2_grpc.ContextStub(b).DeleteDocuments(context_pb2.DeleteDocumentsRequest(ids=[doc.id]))
        deleted = time.monotonic()
        while True:
            reply = await context_pb2_grpc.ContextStub(a).Search(search)
            if not any(h.document.metadata.get("document_id") == doc.id for h in reply.hits):
                break
            assert time.monotonic() - deleted < CHANGE_LOG_BOUND_S, "worker a kept a deleted document"
            await asyncio.sleep(0.02)
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
