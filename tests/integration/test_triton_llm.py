"""The LLM through a real tritonserver (nvidia-pytriton's binary, Python backend, on loopback)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from antiphon.app import App
from antiphon.errors import ModelMissing, Unavailable
from antiphon.inference.llm import LLM, ChatMessage, FinishReason, SamplingOptions
from antiphon.inference.triton_llm import TritonLLM
from antiphon.v1 import conversation_pb2, conversation_pb2_grpc
from tests.conftest import test_settings
from tests.integration.conftest import models_dir
from tests.integration.triton_server import TritonServer, free_port, triton, triton_repository

__all__ = ["triton", "triton_repository"]  # module-scoped fixtures used below

QUESTION = [ChatMessage("user", "What is the capital of France?")]
GREEDY = SamplingOptions(greedy=True, max_tokens=24)


@pytest.fixture
async def triton_llm(triton: TritonServer) -> AsyncIterator[TritonLLM]:
    llm = await TritonLLM.open(triton.url, models_dir())
    try:
        yield llm
    finally:
        await llm.aclose()


async def _generate(llm: LLM, options: SamplingOptions) -> tuple[str, FinishReason | None]:
    stream = llm.chat(QUESTION, options)
    text = "".join([delta async for delta in stream])
    return text, stream.stats.finish_reason


async def test_greedy_text_matches_the_embedded_backend(triton_llm: TritonLLM, real_llm: LLM) -> None:
    via_triton, reason = await _generate(triton_llm, GREEDY)
    embedded, embedded_reason = await _generate(real_llm, GREEDY)
    assert via_triton == embedded
    assert "Paris" in via_triton
    assert reason == embedded_reason
    assert triton_llm.count_tokens(QUESTION) == real_llm.count_tokens(QUESTION)


async def test_stream_reports_stats_and_stop_strings(triton_llm: TritonLLM) -> None:
    stream = triton_llm.chat(QUESTION, SamplingOptions(greedy=True, max_tokens=24, stop=("Paris",)))
    text = "".join([d async for d in stream])
    assert "Paris" not in text
    assert stream.stats.finish_reason is FinishReason.COMPLETED
    assert stream.stats.input_tokens == triton_llm.count_tokens(QUESTION)
    assert stream.stats.first_token_s is not None
    assert stream.stats.output_tokens > 0


async def test_cancel_mid_stream_stops_generation(triton_llm: TritonLLM) -> None:
    stream = triton_llm.chat(
        [ChatMessage("user", "Write a long story about a dragon.")], SamplingOptions(max_tokens=400, seed=1)
    )
    deltas = []
    async for delta in stream:
        deltas.append(delta)
        if len(deltas) == 3:
            break
    await stream.aclose()
    assert stream.stats.finish_reason is FinishReason.CANCELLED
    assert stream.stats.output_tokens < 50
    # The model is free again at once: the next generation is not queued behind 400 tokens.
    text, reason = await _generate(triton_llm, SamplingOptions(greedy=True, max_tokens=4))
    assert text
    assert reason is FinishReason.MAX_TOKENS


async def test_triton_down_is_unavailable_naming_the_url() -> None:
    url = f"127.0.0.1:{free_port()}"
    with pytest.raises(Unavailable, match=url):
        await TritonLLM.open(url, models_dir(), timeout_s=1)


async def test_triton_stopping_mid_session_is_unavailable(triton_repository: object) -> None:
    from pathlib import Path

    assert isinstance(triton_repository, Path)
    server = TritonServer(triton_repository, models=("antiphon_llm",)).start()
    llm = await TritonLLM.open(server.url, models_dir())
    try:
        assert (await _generate(llm, SamplingOptions(greedy=True, max_tokens=2)))[0]
        server.stop()
        with pytest.raises(Unavailable, match=server.url):
            await _generate(llm, GREEDY)
    finally:
        server.stop()
        await llm.aclose()


async def test_model_missing_from_the_repository_is_named(triton: TritonServer) -> None:
    with pytest.raises(ModelMissing, match="'antiphon_llm_v2'.*" + triton.url):
        await TritonLLM.open(triton.url, models_dir(), model_name="antiphon_llm_v2")


async def test_app_serves_a_text_turn_with_the_triton_llm(triton_llm: TritonLLM) -> None:
    app = App(test_settings(models={"dir": str(models_dir())}), llm=triton_llm)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = conversation_pb2_grpc.ConversationStub(channel)
            request = conversation_pb2.TextRequest(text="What is the capital of France?")
            events = [e async for e in stub.Send(request)]
    finally:
        await app.stop(grace_s=2)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "session_started"
    assert kinds[-1] == "turn_end"
    assert "agent_text" in kinds
    assert "".join(e.agent_text.delta for e in events if e.HasField("agent_text")).strip()
