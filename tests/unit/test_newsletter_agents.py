"""The newsletter example: a lead agent delegates research (fetch, allow-listed) and drafting to
sub-agents, then answers with the tenant's style guide from long-term memory in its context."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from antiphon.app import App
from antiphon.context.documents import DocumentInput, DocumentService
from antiphon.context.memory import MemoryStore
from antiphon.gateway.principal import EMBEDDED_PRINCIPAL
from antiphon.inference.llm import ChatMessage, SamplingOptions
from antiphon.v1 import events_pb2 as pb
from antiphon_client import AntiphonClient
from tests.conftest import test_settings
from tests.fakes import FakeEmbedder, FakeLLM

TOOLS_DIR = Path(__file__).resolve().parents[2] / "tools"
FACTS = "Acme shipped 40% more widgets in Q3 than in Q2."


@pytest.fixture
def fact_site() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = FACTS.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _respond(site: str):  # type: ignore[no-untyped-def]
    def respond(messages: Sequence[ChatMessage], options: SamplingOptions) -> list[str] | None:
        system = messages[0].content
        results = [m.content for m in messages if m.content.startswith("Result of")]
        if system.startswith("You lead a B2B newsletter"):
            if options.json_schema is None:
                return ["Acme", " grew", " 40%", "."]
            if not results:
                return [json.dumps({"tool": "agent_researcher", "arguments": {"task": "Q3 widget numbers"}})]
            if len(results) == 1:
                return [json.dumps({"tool": "agent_writer", "arguments": {"task": f"Draft from: {results[0]}"}})]
            return ['{"tool": "answer"}']
        if system.startswith("You research facts"):
            if options.json_schema is None:
                return [f"Facts: {results[0] if results else 'none'}"]
            if not results:
                return [json.dumps({"tool": "http_get", "arguments": {"url": f"{site}/q3"}})]
            return ['{"tool": "answer"}']
        if system.startswith("You write short"):
            return ["Draft", ":", " widgets", " up", " 40%."]
        return None

    return respond


async def test_newsletter_lead_delegates_and_uses_the_style_guide(fact_site: str) -> None:
    llm = FakeLLM()
    llm.responder = _respond(fact_site)
    documents = DocumentService(MemoryStore(), FakeEmbedder())
    await documents.put(
        EMBEDDED_PRINCIPAL,
        [
            DocumentInput(
                "style", "Newsletter style guide: short sentences, no jargon, numbers as digits.", frozenset({"public"})
            )
        ],
    )
    settings = test_settings(tools={"dir": str(TOOLS_DIR), "http_allow": fact_site})
    app = App(settings, llm=llm, documents=documents)
    await app.start()
    try:
        async with AntiphonClient(f"127.0.0.1:{app.port}") as client:
            events = [
                e
                async for e in client.send(
                    "Write this week's newsletter item about widget numbers, following our style guide.",
                    agent_profile="newsletter",
                )
            ]
    finally:
        await app.stop(grace_s=1)
    calls = [e.tool_call.name for e in events if e.HasField("tool_call")]
    results = [e.tool_result for e in events if e.HasField("tool_result")]
    assert calls == ["agent_researcher", "agent_writer"]  # the lead's own calls; sub-agents' stay inside
    assert all(r.ok for r in results)
    assert FACTS in json.loads(results[0].output_json)["answer"]  # fetched through the allow-listed tool
    assert "Draft" in json.loads(results[1].output_json)["answer"]
    assert "".join(e.agent_text.delta for e in events if e.HasField("agent_text")) == "Acme grew 40%."
    assert events[-1].turn_end.reason == pb.TurnEnd.REASON_COMPLETED
    # Every token any agent generated in this turn is counted in its usage (the sub-agents' too).
    assert events[-1].turn_end.usage.output_tokens == llm.produced
    final_prompt = llm.prompts[-1]
    assert "Newsletter style guide" in final_prompt[0].content  # retrieved from memory into the lead's context
    assert any("Result of agent_writer" in m.content for m in final_prompt)


async def test_researcher_cannot_fetch_outside_the_allow_list(fact_site: str) -> None:
    llm = FakeLLM()
    llm.responder = _respond("http://127.0.0.1:9")  # not on the allow-list
    app = App(test_settings(tools={"dir": str(TOOLS_DIR), "http_allow": fact_site}), llm=llm)
    await app.start()
    try:
        async with AntiphonClient(f"127.0.0.1:{app.port}") as client:
            events = [e async for e in client.send("Research Q3.", agent_profile="researcher")]
    finally:
        await app.stop(grace_s=1)
    results = [e.tool_result for e in events if e.HasField("tool_result")]
    assert len(results) == 1
    assert not results[0].ok
    assert "allow" in results[0].error.lower()
    assert events[-1].HasField("turn_end")
    await asyncio.sleep(0)
