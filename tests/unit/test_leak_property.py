"""Property: no principal ever receives text derived from a document it may not read.

Seeded random scenarios on a real server: principals with random label sets (some may read and
continue others' sessions), documents with random labels each holding a unique secret word, and
random interleavings of conversations, continued conversations, history reads, searches and usage
reads. The model repeats its whole prompt (system prompt with memories and summary, and the
history), so anything that reaches a prompt reaches the answer; a small context budget makes the
summariser absorb restricted turns. Every text a principal receives, through any RPC, and every
span of every trace, is checked for secrets the principal may not read.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from antiphon.app import App
from antiphon.context.documents import DocumentService
from antiphon.context.memory import MemoryStore
from antiphon.gateway.principal import Principal
from antiphon.v1 import admin_pb2, admin_pb2_grpc, context_pb2, context_pb2_grpc, conversation_pb2
from antiphon.v1 import conversation_pb2_grpc as conv_grpc
from tests.conftest import test_settings
from tests.fakes import FakeEmbedder, FakeLLM
from tests.tracing import span_exporter
from tests.unit.test_session_access import echo_prompt

SCENARIOS = 150
LABELS = ("public", "hr", "eng", "exec", "legal")
TOPICS = ("payroll", "roadmap", "merger", "lawsuit", "offsite", "budget")


@dataclass(frozen=True)
class Doc:
    id: str
    labels: frozenset[str]
    secret: str


class Scenario:
    def __init__(self, rng: random.Random, tenant: str) -> None:
        self.tenant = tenant
        self.principals: dict[str, Principal] = {}
        for i in range(rng.randint(2, 4)):
            labels = frozenset(rng.sample(LABELS, rng.randint(0, 3)))
            roles = frozenset({"supervisor" if rng.random() < 0.4 else "member"})
            self.principals[f"{tenant}-p{i}"] = Principal(tenant, f"user{i}", roles, labels)
        self.docs = [
            Doc(f"d{i}", frozenset(rng.sample(LABELS, rng.randint(1, 2))), f"SECRET{rng.randrange(10**9):09d}")
            for i in range(rng.randint(2, 5))
        ]
        self.sessions = [f"{tenant}-s{i}" for i in range(rng.randint(1, 2))]

    def text_of(self, doc: Doc, topic: str) -> str:
        return f"The {topic} note {doc.id} says the code is {doc.secret}."

    def forbidden(self, who: str) -> list[str]:
        principal = self.principals[who]
        return [d.secret for d in self.docs if not principal.can_read(d.labels)]


_EXPORTER = span_exporter()


PRINCIPALS: dict[str, Principal] = {}


def _principal_of(context: grpc.aio.ServicerContext) -> Principal:
    return PRINCIPALS[str(dict(context.invocation_metadata() or ()).get("x-test-user"))]


@pytest.fixture
async def app() -> AsyncIterator[App]:
    settings = test_settings(generation={"context_tokens": 700, "max_tokens_limit": 200, "max_tokens": 32})
    settings.auth.role_methods["supervisor"] = ["/antiphon.v1.Conversation/*", "/antiphon.v1.Context/*"]
    settings.auth.role_actions["supervisor"] = ["sessions.read_any", "documents.put"]
    llm = FakeLLM()
    llm.responder = echo_prompt
    app = App(settings, llm=llm, documents=DocumentService(MemoryStore(), FakeEmbedder()), principal_of=_principal_of)
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace_s=1)


def _check(received: str, who: str, scenario: Scenario, where: str) -> None:
    leaked = [s for s in scenario.forbidden(who) if s in received]
    assert not leaked, f"{who} received {leaked} through {where}"


async def _run(channel: grpc.aio.Channel, rng: random.Random, scenario: Scenario) -> dict[str, int]:
    context = context_pb2_grpc.ContextStub(channel)
    conversation = conv_grpc.ConversationStub(channel)
    admin = admin_pb2_grpc.AdminStub(channel)
    writer = f"{scenario.tenant}-writer"  # documents are put by someone who may grant every label
    PRINCIPALS[writer] = Principal(scenario.tenant, "writer", frozenset({"admin"}), frozenset(LABELS))
    docs = [
        context_pb2.Document(id=d.id, text=scenario.text_of(d, TOPICS[i % len(TOPICS)]), acl_labels=sorted(d.labels))
        for i, d in enumerate(scenario.docs)
    ]
    await context.PutDocuments(context_pb2.PutDocumentsRequest(documents=docs), metadata=(("x-test-user", writer),))
    PRINCIPALS.update(scenario.principals)
    counts = {"turns": 0, "quoted": 0, "reads": 0, "summaries": 0, "redacted": 0, "searches": 0, "not_found": 0}
    for _ in range(rng.randint(8, 20)):
        who = rng.choice(list(scenario.principals))
        meta = (("x-test-user", who),)
        session = rng.choice(scenario.sessions)
        op = rng.choice(("turn", "turn", "turn", "read", "search", "usage"))
        try:
            if op == "turn":
                topic = rng.choice(TOPICS)
                request = conversation_pb2.TextRequest(text=f"What does the {topic} note say?", session_id=session)
                answer = ""
                async for event in conversation.Send(request, metadata=meta):
                    _check(str(event), who, scenario, f"Send on {session}")
                    answer += event.agent_text.delta
                counts["turns"] += 1
                counts["quoted"] += any(d.secret in answer for d in scenario.docs)  # the model repeats them
            elif op == "read":
                reply = await context.GetSession(context_pb2.GetSessionRequest(session_id=session), metadata=meta)
                _check(str(reply), who, scenario, f"GetSession {session}")
                counts["reads"] += 1
                counts["summaries"] += bool(reply.summary or reply.summary_redacted)
                counts["redacted"] += any(t.redacted for t in reply.turns) or reply.summary_redacted
            elif op == "search":
                query = context_pb2.SearchRequest(query=f"the {rng.choice(TOPICS)} note code", top_k=5)
                _check(str(await context.Search(query, metadata=meta)), who, scenario, "Search")
                counts["searches"] += 1
            else:
                usage = await admin.GetUsage(admin_pb2.GetUsageRequest(), metadata=meta)
                _check(str(usage), who, scenario, "GetUsage")
        except grpc.aio.AioRpcError as err:
            if err.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
                raise
            _check(err.details() or "", who, scenario, "an error")
            counts["not_found"] += 1
    return counts


async def test_no_principal_receives_text_derived_from_a_document_it_may_not_read(app: App) -> None:
    rng = random.Random(20261203)
    totals = dict.fromkeys(("turns", "quoted", "reads", "summaries", "redacted", "searches", "not_found"), 0)
    started = time.perf_counter()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        for n in range(SCENARIOS):
            scenario = Scenario(rng, f"tenant{n}")
            _EXPORTER.clear()
            for key, value in (await _run(channel, rng, scenario)).items():
                totals[key] += value
            for span in _EXPORTER.get_finished_spans():  # traces hold ids and counts, never texts
                text = f"{span.name} {dict(span.attributes or {})} {[e.attributes for e in span.events]}"
                assert not [d.secret for d in scenario.docs if d.secret in text], span.name
    print(f"leak property: {SCENARIOS} scenarios, {totals}, {time.perf_counter() - started:.1f} s")
    # The scenarios exercised what they claim (a vacuous run would pass too).
    assert totals["turns"] > 200
    assert totals["quoted"] > 50  # secrets did reach the principals allowed to read them
    assert totals["reads"] > 25
    assert totals["redacted"] > 5  # some readers were shown less than the history holds
    assert totals["summaries"] > 5  # and the summariser absorbed turns
    assert totals["not_found"] > 10
