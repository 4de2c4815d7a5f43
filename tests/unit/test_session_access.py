"""Sessions belong to their creator; turns derived from documents carry the documents' labels."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc
import pytest

from antiphon.app import App
from antiphon.context.documents import DocumentService
from antiphon.context.memory import MemoryStore
from antiphon.gateway.principal import Principal
from antiphon.inference.llm import ChatMessage, SamplingOptions
from antiphon.v1 import context_pb2, context_pb2_grpc, conversation_pb2, conversation_pb2_grpc
from antiphon.v1 import events_pb2 as pb
from tests.conftest import test_settings
from tests.fakes import FakeEmbedder, FakeLLM

MEMO = "The hr memo says the secret bonus code is ZEBRA-42."
P = Principal
PRINCIPALS = {
    "alice": P("acme", "alice", frozenset({"member"}), frozenset({"public", "hr"})),
    "alice-moved": P("acme", "alice", frozenset({"member"}), frozenset({"public"})),  # lost the hr label
    "bob": P("acme", "bob", frozenset({"member"}), frozenset({"public", "hr"})),
    "admin": P("acme", "root", frozenset({"admin"}), frozenset({"public", "hr"})),
    "lead": P("acme", "lead", frozenset({"supervisor"}), frozenset({"public"})),
    "hr-lead": P("acme", "hr-lead", frozenset({"supervisor"}), frozenset({"public", "hr"})),
}


def echo_prompt(messages: Sequence[ChatMessage], _options: SamplingOptions) -> list[str]:
    """A model that repeats everything it was given: whatever reached its prompt reaches the answer."""
    return [f" {m.content}" for m in messages] + [" done."]


def _principal_of(context: grpc.aio.ServicerContext) -> Principal:
    return PRINCIPALS[str(dict(context.invocation_metadata() or ()).get("x-test-user", "alice"))]


def _as(who: str) -> tuple[tuple[str, str]]:
    return (("x-test-user", who),)


@pytest.fixture
async def app() -> AsyncIterator[App]:
    settings = test_settings()
    settings.auth.role_methods["supervisor"] = ["/antiphon.v1.Conversation/*", "/antiphon.v1.Context/*"]
    settings.auth.role_actions["supervisor"] = ["sessions.read_any"]
    llm = FakeLLM()
    llm.responder = echo_prompt
    documents = DocumentService(MemoryStore(), FakeEmbedder())
    app = App(settings, llm=llm, documents=documents, principal_of=_principal_of)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            memo = context_pb2.Document(id="memo", text=MEMO, acl_labels=["hr"])
            await context_pb2_grpc.ContextStub(channel).PutDocuments(
                context_pb2.PutDocumentsRequest(documents=[memo]), metadata=_as("alice")
            )
        yield app
    finally:
        await app.stop(grace_s=1)


async def _send(channel: grpc.aio.Channel, who: str, session_id: str, text: str) -> str:
    stub = conversation_pb2_grpc.ConversationStub(channel)
    request = conversation_pb2.TextRequest(text=text, session_id=session_id)
    events = [e async for e in stub.Send(request, metadata=_as(who))]
    assert events[-1].turn_end.reason == pb.TurnEnd.REASON_COMPLETED
    return "".join(e.agent_text.delta for e in events if e.HasField("agent_text"))


async def _session(channel: grpc.aio.Channel, who: str, session_id: str) -> context_pb2.Session:
    stub = context_pb2_grpc.ContextStub(channel)
    reply: context_pb2.Session = await stub.GetSession(
        context_pb2.GetSessionRequest(session_id=session_id), metadata=_as(who)
    )
    return reply


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_another_principal_cannot_tell_a_session_exists(app: App) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        await _send(channel, "alice", "alices", "hello")
        context = context_pb2_grpc.ContextStub(channel)
        conversation = conversation_pb2_grpc.ConversationStub(channel)
        for session_id in ("alices", "nobodys"):  # the same answer as for a session that does not exist
            get = context.GetSession(context_pb2.GetSessionRequest(session_id=session_id), metadata=_as("bob"))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await get
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert err.value.details() == f"session_id: no session {session_id!r}"
        delete = context.DeleteSession(context_pb2.DeleteSessionRequest(session_id="alices"), metadata=_as("bob"))
        assert await _code(delete) == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            request = conversation_pb2.TextRequest(text="what did she say?", session_id="alices")
            [e async for e in conversation.Send(request, metadata=_as("bob"))]
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        call = conversation.Converse(metadata=_as("bob"))
        await call.write(pb.ClientEvent(session_config=pb.SessionConfig(session_id="alices")))
        assert await call.code() == grpc.StatusCode.NOT_FOUND
        assert len((await _session(channel, "alice", "alices")).turns) == 2  # untouched


async def test_admins_may_delete_but_not_read_and_a_supervisor_may_read(app: App) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        await _send(channel, "alice", "s1", "hello")
        context = context_pb2_grpc.ContextStub(channel)
        get = context.GetSession(context_pb2.GetSessionRequest(session_id="s1"), metadata=_as("admin"))
        assert await _code(get) == grpc.StatusCode.NOT_FOUND  # "*" does not include sessions.read_any
        assert (await _session(channel, "lead", "s1")).turns[0].content == "hello"
        await _send(channel, "lead", "s1", "and then?")  # continues it
        assert len((await _session(channel, "alice", "s1")).turns) == 4
        delete = context.DeleteSession(context_pb2.DeleteSessionRequest(session_id="s1"), metadata=_as("admin"))
        assert await _code(delete) == grpc.StatusCode.OK
        assert await _code(context.GetSession(context_pb2.GetSessionRequest(session_id="s1"), metadata=_as("alice")))


async def test_an_answer_from_a_restricted_document_is_redacted_for_readers_without_its_labels(app: App) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        answer = await _send(channel, "alice", "memo-chat", "What does the hr memo say about the bonus code?")
        assert "ZEBRA-42" in answer  # the model quoted the memo to alice, who may read it
        mine = await _session(channel, "alice", "memo-chat")
        assert "ZEBRA-42" in mine.turns[1].content
        assert not mine.turns[1].redacted
        assert "ZEBRA-42" in (await _session(channel, "hr-lead", "memo-chat")).turns[1].content

        theirs = await _session(channel, "lead", "memo-chat")  # may read sessions, not hr documents
        assert [(t.role, t.content, t.redacted) for t in theirs.turns] == [
            ("user", "What does the hr memo say about the bonus code?", False),
            ("assistant", "", True),
        ]
        # Continuing it: the withheld exchange never reaches the model, so it cannot repeat it.
        continued = await _send(channel, "lead", "memo-chat", "Repeat what you said.")
        assert "ZEBRA-42" not in continued
        assert "bonus code" not in continued  # the question of a withheld answer goes with it
        # ...and what alice says next carries the memo's labels again (the history is in her prompt).
        later = await _send(channel, "alice", "memo-chat", "Say it again.")
        assert "ZEBRA-42" in later
        assert [t.redacted for t in (await _session(channel, "lead", "memo-chat")).turns] == [
            False,
            True,
            False,
            False,
            False,
            True,
        ]
        # Labels are checked when reading, not when writing: alice without hr no longer sees it either.
        moved = await _session(channel, "alice-moved", "memo-chat")
        assert not any("ZEBRA-42" in t.content for t in moved.turns)
        assert "ZEBRA-42" not in await _send(channel, "alice-moved", "memo-chat", "Once more?")
