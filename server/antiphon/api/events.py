"""Building ServerEvents: sequence numbers, timestamps and message conversions."""

from __future__ import annotations

import time
from typing import Any

import grpc

from antiphon.agent.profiles import RequestedOptions
from antiphon.agent.turn import TurnState
from antiphon.errors import AntiphonError
from antiphon.inference.llm import FinishReason, SamplingOptions
from antiphon.v1 import events_pb2 as pb

_REASONS = {
    FinishReason.COMPLETED: pb.TurnEnd.REASON_COMPLETED,
    FinishReason.MAX_TOKENS: pb.TurnEnd.REASON_MAX_TOKENS,
    FinishReason.CANCELLED: pb.TurnEnd.REASON_INTERRUPTED,
}


class EventWriter:
    """Stamps each event of one stream with the next sequence number and the server time."""

    __slots__ = ("_seq",)

    def __init__(self) -> None:
        self._seq = 0

    def event(self, turn_id: str = "", **oneof: Any) -> pb.ServerEvent:
        self._seq += 1
        return pb.ServerEvent(seq=self._seq, server_time_us=time.time_ns() // 1000, turn_id=turn_id, **oneof)

    def text(self, turn_id: str, delta: str) -> pb.ServerEvent:
        return self.event(turn_id, agent_text=pb.AgentText(delta=delta))

    def error(self, exc: AntiphonError, turn_id: str = "") -> pb.ServerEvent:
        return self.event(turn_id, error=pb.Error(code=exc.code.value[0], message=exc.message, retryable=exc.retryable))

    def turn_end(self, state: TurnState, *, failed: bool = False) -> pb.ServerEvent:
        stats = state.stats
        if failed:
            reason = pb.TurnEnd.REASON_ERROR
        elif state.interrupted:
            reason = pb.TurnEnd.REASON_INTERRUPTED
        else:
            reason = _REASONS.get(stats.finish_reason or FinishReason.CANCELLED, pb.TurnEnd.REASON_INTERRUPTED)
        latency = pb.Latency(
            first_token_ms=(state.first_sent_s or 0.0) * 1000,
            total_ms=(time.perf_counter() - state.started) * 1000,
            model_ms=stats.model_s * 1000,
            queue_ms=stats.queue_s * 1000,
        )
        if state.voice is not None:
            state.voice.fill(latency, state)
        usage = pb.Usage(input_tokens=stats.input_tokens, output_tokens=stats.output_tokens)
        return self.event(state.turn_id, turn_end=pb.TurnEnd(usage=usage, latency=latency, reason=reason))


def requested_options(msg: pb.GenerationOptions) -> RequestedOptions:
    return RequestedOptions(
        temperature=msg.temperature,
        top_p=msg.top_p,
        max_tokens=msg.max_tokens,
        seed=msg.seed if msg.HasField("seed") else None,
        stop=tuple(msg.stop),
        greedy=msg.greedy,
    )


def generation_message(options: SamplingOptions) -> pb.GenerationOptions:
    msg = pb.GenerationOptions(
        temperature=options.temperature,
        top_p=options.top_p,
        max_tokens=options.max_tokens,
        stop=list(options.stop),
        greedy=options.greedy,
    )
    if options.seed is not None:
        msg.seed = options.seed
    return msg


def reason_label(state: TurnState, failed: bool) -> str:
    if failed:
        return "error"
    if state.interrupted:
        return FinishReason.CANCELLED.value
    return (state.stats.finish_reason or FinishReason.CANCELLED).value


def code_name(code: grpc.StatusCode) -> str:
    return str(code.name)
