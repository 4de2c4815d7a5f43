"""Context RPCs over a real loopback server: documents with ACLs, sessions, right to be forgotten."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from antiphon.app import App
from antiphon.context.documents import DocumentInput, DocumentService
from antiphon.context.memory import MemoryStore
from antiphon.gateway.principal import Principal
from antiphon.v1 import context_pb2 as pb
from antiphon.v1 import context_pb2_grpc
from antiphon_client import AntiphonClient
from tests.conftest import test_settings
from tests.fakes import FakeEmbedder, FakeLLM

ALICE = Principal("acme", "alice", frozenset({"member"}), frozenset({"public", "hr"}))
BOB = Principal("acme", "bob", frozenset({"member"}), frozenset({"public"}))
EVE = Principal("evil", "eve", frozenset({"member"}), frozenset({"public", "hr"}))
PRINCIPALS = {"alice": ALICE, "bob": BOB, "eve": EVE}


def _principal_of(context: grpc.aio.ServicerContext) -> Principal:
    who = dict(context.invocation_metadata() or ()).get("x-test-user", "alice")
    return PRINCIPALS[str(who)]


@pytest.fixture
async def app() -> AsyncIterator[App]:
    documents = DocumentService(MemoryStore(), FakeEmbedder())
    app = App(test_settings(), llm=FakeLLM(), documents=documents, principal_of=_principal_of)
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace_s=1)


def _as(who: str) -> tuple[tuple[str, str]]:
    return (("x-test-user", who),)


async def test_documents_respect_tenants_and_labels(app: App) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = context_pb2_grpc.ContextStub(channel)
        docs = [
            pb.Document(id="hours", text="The office opens at nine every weekday.", acl_labels=["public"]),
            pb.Document(id="salaries", text="Salaries are reviewed every march by the board.", acl_labels=["hr"]),
        ]
        reply = await stub.PutDocuments(pb.PutDocumentsRequest(documents=docs), metadata=_as("alice"))
        assert list(reply.ids) == ["hours", "salaries"]

        async def found(who: str, query: str) -> list[str]:
            result = await stub.Search(pb.SearchRequest(query=query, top_k=5), metadata=_as(who))
            return [h.document.metadata["document_id"] for h in result.hits]

        assert (await found("alice", "when are salaries reviewed"))[0] == "salaries"
        assert "salaries" not in await found("bob", "when are salaries reviewed")  # bob lacks the hr label
        assert await found("eve", "when are salaries reviewed") == []  # another tenant sees nothing
        # Bob may not write labels he does not hold.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PutDocuments(
                pb.PutDocumentsRequest(documents=[pb.Document(id="x", text="y", acl_labels=["hr"])]),
                metadata=_as("bob"),
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        deleted = await stub.DeleteDocuments(pb.DeleteDocumentsRequest(ids=["salaries"]), metadata=_as("alice"))
        assert deleted.deleted == 1
        assert "salaries" not in await found("alice", "when are salaries reviewed")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.PutDocumentsRequest(), "documents"),
        (pb.PutDocumentsRequest(documents=[pb.Document(id="a", text=" ", acl_labels=["public"])]), "text"),
        (pb.PutDocumentsRequest(documents=[pb.Document(id="a", text="t")]), "acl_labels"),
        (pb.PutDocumentsRequest(documents=[pb.Document(id="a#1", text="t", acl_labels=["public"])]), "id"),
    ],
)
async def test_bad_documents_are_invalid_argument(app: App, request_: pb.PutDocumentsRequest, field: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await context_pb2_grpc.ContextStub(channel).PutDocuments(request_)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (err.value.details() or "")


async def test_get_and_delete_session(app: App) -> None:
    address = f"127.0.0.1:{app.port}"
    async with AntiphonClient(address) as client:
        conv = await client.conversation(session_id="forget-me")
        await conv.turn("my secret is 42")
        async with grpc.aio.insecure_channel(address) as channel:
            stub = context_pb2_grpc.ContextStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:  # still open on a stream
                await stub.DeleteSession(pb.DeleteSessionRequest(session_id="forget-me"))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            await conv.end()
            async for _ in conv.events():
                pass
            session = await stub.GetSession(pb.GetSessionRequest(session_id="forget-me"))
            assert next(t.content for t in session.turns) == "my secret is 42"
            with pytest.raises(grpc.aio.AioRpcError) as err:  # another tenant cannot read it
                await stub.GetSession(pb.GetSessionRequest(session_id="forget-me"), metadata=_as("eve"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            await stub.DeleteSession(pb.DeleteSessionRequest(session_id="forget-me"))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetSession(pb.GetSessionRequest(session_id="forget-me"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_memory_survives_a_restart_without_redis(tmp_path: Path) -> None:
    for round_ in range(2):
        documents = DocumentService(MemoryStore(), FakeEmbedder(), persist_dir=tmp_path / "memory")
        await documents.start()
        if round_ == 0:
            await documents.put(ALICE, [DocumentInput("kept", "The archive keeps every invoice.", frozenset({"hr"}))])
        result = await documents.search(ALICE, "archive invoice", 3, -1.0)
        assert [h.document.metadata["document_id"] for h in result.hits] == ["kept"]
        assert (await documents.search(BOB, "archive invoice", 3, -1.0)).hits == ()  # ACLs survive too
        await documents.aclose()
