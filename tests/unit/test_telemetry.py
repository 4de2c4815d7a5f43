"""Every turn is a trace with GenAI spans; Prometheus metrics count turns and tokens."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

from antiphon.app import App
from antiphon.v1 import conversation_pb2, conversation_pb2_grpc
from tests.conftest import RunningServer, test_settings
from tests.fakes import FakeLLM
from tests.tracing import span_exporter

_EXPORTER = span_exporter()


def _install_provider() -> None:
    span_exporter()  # the process-wide provider and exporter


async def test_turn_trace_has_genai_spans(server: RunningServer) -> None:
    _install_provider()
    _EXPORTER.clear()
    stub = conversation_pb2_grpc.ConversationStub(server.channel)
    events = [e async for e in stub.Send(conversation_pb2.TextRequest(text="hi", session_id="traced"))]
    spans = {s.name: s for s in _EXPORTER.get_finished_spans()}
    agent, chat = spans["invoke_agent assistant"], spans["chat fake"]
    assert chat.parent is not None
    assert agent.context is not None
    assert chat.parent.span_id == agent.context.span_id
    assert agent.attributes is not None
    assert chat.attributes is not None
    assert agent.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert agent.attributes["gen_ai.conversation.id"] == "traced"
    assert agent.attributes["antiphon.turn_id"] == events[-1].turn_id
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.usage.output_tokens"] == events[-1].turn_end.usage.output_tokens
    assert chat.attributes["gen_ai.usage.input_tokens"] == events[-1].turn_end.usage.input_tokens
    assert chat.attributes["gen_ai.response.finish_reasons"] == ("completed",)


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_metrics_endpoint_counts_turns(fake_llm: FakeLLM) -> None:
    port = _free_port()
    app = App(test_settings(telemetry={"metrics_port": port}), llm=fake_llm)
    await app.start()
    try:
        import grpc

        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = conversation_pb2_grpc.ConversationStub(channel)
            for _ in range(2):
                _ = [e async for e in stub.Send(conversation_pb2.TextRequest(text="hi"))]
        body = await asyncio.to_thread(_scrape, f"http://127.0.0.1:{port}/metrics")
    finally:
        await app.stop(grace_s=1)
    assert 'antiphon_turns_total{agent="assistant",reason="completed"} 2.0' in body
    assert 'antiphon_llm_tokens_total{direction="output"} 8.0' in body
    assert "antiphon_time_to_first_token_seconds_count 2.0" in body
    assert "antiphon_active_streams 0.0" in body
