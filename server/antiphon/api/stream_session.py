"""The per-stream state machine shared by Converse and Send.

Inputs (text, interrupt, end-of-input) arrive from the client; turns run one
at a time in order; every server event goes through one bounded queue, so a
client that stops reading pauses generation instead of growing memory.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from antiphon.agent.profiles import ProfileRegistry
from antiphon.agent.tooling import ToolCallInfo, ToolOutcome, parse_client_tools
from antiphon.agent.turn import TurnRunner, TurnState
from antiphon.aio import cancel_and_wait
from antiphon.api.events import EventWriter, generation_message, reason_label, requested_options
from antiphon.api.session_access import require_use
from antiphon.api.speculation import Speculation
from antiphon.config import SESSION_ID_RE, Settings
from antiphon.context.sessions import SessionStore
from antiphon.errors import AntiphonError, FailedPrecondition, InvalidArgument, Unavailable, quote
from antiphon.gateway.principal import EMBEDDED_PRINCIPAL, Principal
from antiphon.logs import session_id_var, turn_id_var
from antiphon.telemetry.metrics import Metrics
from antiphon.tools.schema import check_json_bounds, load_json
from antiphon.v1 import events_pb2 as pb

if TYPE_CHECKING:
    from antiphon.api.voice_channel import VoiceChannel
    from antiphon.voice.engines import VoiceEngines
    from antiphon.voice.speaker import Speaker
    from antiphon.voice.timing import VoiceTiming

log = logging.getLogger(__name__)

OUT_QUEUE_EVENTS = 256
CLIENT_TOOL_TIMEOUT_S = 60.0
MAX_PENDING_INPUTS = 8


@dataclass(frozen=True, slots=True)
class TurnInput:
    text: str
    voice: VoiceTiming | None = None  # set for a turn the user spoke
    speculation: Speculation | None = None  # set for a turn started before the user's turn was confirmed


class AudioMeter(Protocol):
    """Gateway: meters audio seconds (recognised and spoken) and enforces the audio rate limit."""

    def record_audio(self, principal: Principal, stt_seconds: float = 0.0, tts_seconds: float = 0.0) -> None: ...
    async def admit_audio(self, principal: Principal) -> None: ...


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    profiles: ProfileRegistry
    sessions: SessionStore
    runner: TurnRunner
    # Who is calling; the gateway's authentication replaces the embedded default.
    principal_of: Callable[[grpc.aio.ServicerContext], Principal] = lambda _context: EMBEDDED_PRINCIPAL
    voice: VoiceEngines | None = None  # None: text only (voice off, or its models missing)
    meter: AudioMeter | None = None  # gateway: audio usage and rate limits
    metrics: Metrics | None = None


class StreamSession:
    def __init__(self, services: Services, principal: Principal) -> None:
        self._svc = services
        self._principal = principal
        self._owner = uuid.uuid4().hex
        self._writer = EventWriter()
        self.out: asyncio.Queue[pb.ServerEvent | None] = asyncio.Queue(OUT_QUEUE_EVENTS)
        self._pending: collections.deque[TurnInput] = collections.deque()
        self._worker: asyncio.Task[None] | None = None
        self._turn: asyncio.Task[None] | None = None
        self._ended = False
        self._leased = False
        self.session_id = ""
        self.client_tools: list[tuple[str, str, dict[str, Any]]] = []
        self._waiting: dict[str, asyncio.Future[ToolOutcome]] = {}
        self.voice: VoiceChannel | None = None
        self.fatal: AntiphonError | None = None  # ends the stream with this status
        self._current: tuple[TurnState, Speaker | None] | None = None
        self._speculation: Speculation | None = None  # waiting for the endpointer's verdict
        self._running_speculation: Speculation | None = None  # the running turn's, until it ends
        self._carry = ""  # a spoken turn cut off before any of its answer was heard
        self._interrupted: pb.Interrupted | None = None
        self._lost: asyncio.Task[None] | None = None  # ending the stream after its lease was taken over

    async def start(
        self,
        session_id: str,
        profile_name: str,
        generation: pb.GenerationOptions,
        client_tools: Sequence[pb.ClientTool] = (),
    ) -> pb.ServerEvent:
        """Validate the session settings, take the session's lease and build session_started."""
        if session_id and not SESSION_ID_RE.fullmatch(session_id):
            raise InvalidArgument("session_id: use 1..128 characters from [A-Za-z0-9._:-]")
        self._profile = self._svc.profiles.get(profile_name)
        self._options = self._svc.profiles.resolve(self._profile, requested_options(generation))
        taken = {*self._profile.tools, *(f"agent_{s.replace('-', '_')}" for s in self._profile.subagents)}
        for i, tool in enumerate(client_tools):  # bounded before parse_client_tools parses them
            check_json_bounds(tool.input_schema_json, where=f"session_config.client_tools[{i}].input_schema_json")
        self.client_tools = parse_client_tools(
            [(t.name, t.description, t.input_schema_json) for t in client_tools], taken
        )
        self.session_id = session_id or uuid.uuid4().hex
        session_id_var.set(self.session_id)
        tenant, sessions = self._principal.tenant, self._svc.sessions
        # Another principal's session is NOT_FOUND, before its lease could tell that it exists.
        existing = await sessions.get(tenant, self.session_id) if session_id else None
        if existing is not None:
            require_use(self._principal, existing, self.session_id)
        lease = await sessions.acquire(tenant, self.session_id, self._owner, on_lost=self._lease_lost)
        if lease is None:
            raise FailedPrecondition(
                f"session_id: session {self.session_id!r} is already open on another stream; "
                "close that stream first or use another session id"
            )
        self._leased = True
        record = await sessions.create(tenant, self.session_id, self._profile.name, self._principal.subject)
        require_use(self._principal, record, self.session_id)  # created by someone else meanwhile
        log.info("session started", extra={"agent": self._profile.name, "history_turns": len(record.turns)})
        return self._writer.event(
            session_started=pb.SessionStarted(
                session_id=self.session_id,
                agent_profile=self._profile.name,
                generation=generation_message(self._options),
                history_turns=len(record.turns),
                lost_turn=lease.lost_turn,
            )
        )

    async def submit_text(self, text: str) -> None:
        limit = self._svc.settings.server.max_input_chars
        if self._ended:
            await self.report(FailedPrecondition("text: input arrived after end_of_input"))
            return
        if not text.strip():
            await self.report(InvalidArgument("text.content: must not be empty"))
            return
        if len(text) > limit:
            await self.report(InvalidArgument(f"text.content: {len(text)} characters exceeds the limit of {limit}"))
            return
        await self._enqueue(TurnInput(text))

    async def submit_voice(self, text: str, timing: VoiceTiming) -> None:
        """A final transcript: the user's next turn."""
        if self._ended:
            return
        if self._carry:
            text, self._carry = f"{self._carry} {text}", ""
        await self._enqueue(TurnInput(text, timing))

    def speculate(self, text: str, key: tuple[int, int]) -> bool:
        """Start answering a probably-final transcript now, its events held back (see speculation.py)."""
        busy = self._turn is not None or self._pending or (self._worker is not None and not self._worker.done())
        if self._ended or busy or self._carry or self._speculation is not None:
            return False
        self._speculation = Speculation(key)
        self._pending.append(TurnInput(text, speculation=self._speculation))
        self._worker = asyncio.create_task(self._work(), name=f"turns:{self.session_id}")
        return True

    def commit(self, key: tuple[int, int], timing: VoiceTiming) -> bool:
        """The endpointer ended the turn on the speculated audio: let the answer out."""
        spec, self._speculation = self._speculation, None
        if spec is None or spec.key != key or spec.cancelled:
            return False
        spec.commit(timing)
        if self._svc.metrics is not None:
            self._svc.metrics.early_starts.labels("committed").inc()
        return True

    def drop_speculation(self) -> None:
        """The user spoke again: the speculative turn never happened."""
        spec, self._speculation = self._speculation, None
        if spec is None:
            return
        spec.cancelled = True
        if self._svc.metrics is not None:
            self._svc.metrics.early_starts.labels("dropped").inc()
        self._pending = collections.deque(t for t in self._pending if t.speculation is not spec)
        if self._running_speculation is spec and self._turn is not None and self._current is not None:
            state, speaker = self._current
            state.interrupted = True
            state.heard_text = ""  # nothing was heard: no history
            if speaker is not None:
                speaker.cancel()
            self._turn.cancel()

    async def _enqueue(self, turn: TurnInput) -> None:
        if len(self._pending) >= MAX_PENDING_INPUTS:
            await self.report(
                Unavailable(f"input: {MAX_PENDING_INPUTS} inputs already wait for the current turn; send fewer")
            )
            return
        self._pending.append(turn)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name=f"turns:{self.session_id}")

    def interrupt(self) -> None:
        """Cancel the turn in progress, and its speech at once; queued inputs still run.

        What the user heard is settled here, before the cancellation reaches the turn's
        own cleanup, which records the history from it."""
        if self._turn is None or self._current is None:
            return
        state, speaker = self._current
        if not state.interrupted:
            state.interrupted = True
            if speaker is not None:
                played = speaker.played_ms()
                state.heard_text = speaker.heard_text(played)
                speaker.cancel()
                self._interrupted = pb.Interrupted(played_ms=round(played), heard_text=state.heard_text)
            else:
                self._interrupted = pb.Interrupted(played_ms=0, heard_text=state.text)
        self._turn.cancel()

    def barge_in(self) -> None:
        """The user talked over the answer (voice activity, past barge_in.min_speech_ms)."""
        if self._current is None:
            return
        if self._running_speculation is not None and not self._running_speculation.committed:
            self.drop_speculation()
            return
        state, _ = self._current
        self.interrupt()
        if self._svc.metrics is not None:
            self._svc.metrics.barge_ins.inc()
        if state.voice is not None and not state.heard_text:
            self._carry = state.user_text  # nothing was heard: the new speech continues this turn

    @property
    def principal(self) -> Principal:
        return self._principal

    @property
    def meter(self) -> AudioMeter | None:
        return self._svc.meter

    async def put(self, turn_id: str, **oneof: Any) -> None:
        """Send an event; a speculative turn's wait until it is confirmed (numbered when they go)."""
        spec = self._running_speculation
        if turn_id and spec is not None and spec.turn_id == turn_id:
            await spec.wait()
        await self.out.put(self._writer.event(turn_id, **oneof))

    async def end_idle(self, why: str) -> None:
        """End the stream cleanly: no more input is taken, the turn in progress finishes."""
        log.info("session idle: %s", why)
        await self.put("", session_ended=pb.SessionEnded(reason="idle"))
        await self.end_input()

    async def fail(self, exc: AntiphonError) -> None:
        """A stream-ending error (bad audio): the RPC ends with its status once events drain."""
        self.fatal = exc
        self.interrupt()
        self._ended = True
        self._pending.clear()
        if self._worker is None or self._worker.done():
            await self.out.put(None)

    async def end_input(self) -> None:
        """No more input: finish the queued turns, then end the event stream."""
        if self._ended:
            return
        self._ended = True
        self.drop_speculation()  # no endpoint can confirm it any more
        if self._worker is None or self._worker.done():
            await self.out.put(None)

    async def report(self, exc: AntiphonError, turn_id: str = "") -> None:
        await self.out.put(self._writer.error(exc, turn_id))

    async def close(self) -> None:
        """Stop everything this stream runs and release the session (client gone or stream over)."""
        if self.voice is not None:
            await self.voice.close()
        await cancel_and_wait(self._turn, self._worker)
        if self._leased:
            self._leased = False
            await self._svc.sessions.release(self._principal.tenant, self.session_id, self._owner)

    async def _note_turn(self, text: str | None) -> None:
        """The turn in flight, noted in the store (best effort: it only lets a stream that takes
        over after a crash report the turn as lost)."""
        sessions, tenant = self._svc.sessions, self._principal.tenant
        try:
            if text is None:
                await sessions.end_turn(tenant, self.session_id, self._owner)
            else:
                await sessions.begin_turn(tenant, self.session_id, self._owner, text)
        except AntiphonError as exc:
            log.warning("could not note the turn in flight: %s", exc.message)

    def _lease_lost(self) -> None:
        """Another stream took the session over (this worker looked dead to the others): this stream
        ends at once, so two streams never answer in one session; its turn cannot be recorded."""
        self._leased = False
        exc = FailedPrecondition(
            f"session_id: session {self.session_id!r} was resumed on another stream; this stream has ended"
        )
        self._lost = asyncio.get_running_loop().create_task(self.fail(exc), name=f"lease-lost:{self.session_id}")

    async def _work(self) -> None:
        while self._pending:
            await self._run_turn(self._pending.popleft())
        if self._ended:
            await self.out.put(None)

    async def _run_turn(self, turn: TurnInput) -> None:
        state = TurnState(self.session_id, self._profile, self._options, turn.text, principal=self._principal)
        state.voice, state.lease = turn.voice, self._owner
        turn_id_var.set(state.turn_id)
        spec = self._running_speculation = turn.speculation
        if spec is not None:
            spec.turn_id = state.turn_id
        sink = _StreamSink(self, state.turn_id, spec)
        speaker = self._start_speech(state, sink, spec)
        self._current = (state, speaker)
        self._interrupted = None
        self._turn = asyncio.create_task(self._svc.runner.run(state, sink), name=f"turn:{state.turn_id}")
        try:
            await self._note_turn(turn.text)  # while the turn starts: no round trip before its first token
            await asyncio.wait([self._turn])
        except asyncio.CancelledError:  # the stream is closing: the turn and its speech go with it
            await cancel_and_wait(self._turn, speaker.task if speaker is not None else None)
            raise
        await self._note_turn(None)
        self._current = None
        self._running_speculation = None
        if self.voice is not None:
            self.voice.ingest.arm_barge_in(False)
        if speaker is not None:
            await speaker.aclose()
        if spec is not None and not spec.committed:
            # Dropped (the user spoke on), or it ended before it was confirmed: the final transcript
            # then starts a turn the usual way. Either way this one sends nothing.
            spec.cancelled = True
            if self._speculation is spec:
                self._speculation = None
            self._turn = None
            turn_id_var.set("")
            return
        if spec is not None and spec.timing is not None:
            state.voice = spec.timing
            spec.timing.early_start = True
        await self._end_speech(state, speaker)
        failed = False
        if not self._turn.cancelled() and (exc := self._turn.exception()) is not None:
            # The one place a turn's failure is contained: report it, keep the stream.
            failed = True
            if not isinstance(exc, AntiphonError):
                log.error("turn failed", exc_info=exc)
                exc = AntiphonError("internal error in the turn; the server log has details")
            await self.report(exc, state.turn_id)
        self._turn = None
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()
        await self._finish_turn(state, failed)
        turn_id_var.set("")

    async def _finish_turn(self, state: TurnState, failed: bool) -> None:
        """turn_end, metrics and the work that may follow a turn (history compression)."""
        end = self._writer.turn_end(state, failed=failed)
        await self.out.put(end)
        if self._svc.metrics is not None and end.turn_end.latency.voice_to_voice_ms:
            self._svc.metrics.voice_to_voice.observe(end.turn_end.latency.voice_to_voice_ms / 1000)
        self._svc.runner.observe(state, reason_label(state, failed))
        try:
            await self._svc.runner.after_turn(state)
        except AntiphonError as exc:  # compression is best effort; the history stays as it was
            log.warning("after-turn work failed: %s", exc.message)
        log.info(
            "turn ended",
            extra={
                "reason": reason_label(state, failed),
                "input_tokens": state.stats.input_tokens,
                "output_tokens": state.stats.output_tokens,
                "first_token_ms": round((state.first_sent_s or 0) * 1000, 1),
                "voice_to_voice_ms": round(end.turn_end.latency.voice_to_voice_ms, 1),
            },
        )

    def _start_speech(self, state: TurnState, sink: _StreamSink, spec: Speculation | None) -> Speaker | None:
        """Voice: the answer is also spoken, and the user may barge in while it is."""
        if self.voice is None:
            return None
        speaker = sink.speaker = self.voice.speaker(state.turn_id)
        speaker.start()
        # A speculative turn keeps no history until it is confirmed.
        state.until_spoken = speaker.wait_played if spec is None else _after(spec.wait, speaker.wait_played)
        self.voice.ingest.arm_barge_in(True)
        return speaker

    async def _end_speech(self, state: TurnState, speaker: Speaker | None) -> None:
        if speaker is not None:
            if self._svc.meter is not None and speaker.sent_ms:
                self._svc.meter.record_audio(self._principal, tts_seconds=speaker.sent_ms / 1000)
            if state.voice is not None:
                state.voice.first_audio = speaker.first_audio_at
                state.voice.tts_s = speaker.tts_s
                state.voice.audio_out_ms = speaker.sent_ms
            if speaker.error is not None:
                await self.report(Unavailable(f"speech synthesis failed; the answer is text only: {speaker.error}"))
        if self._interrupted is not None:
            await self.put(state.turn_id, interrupted=self._interrupted)

    async def ask_client(self, call: ToolCallInfo) -> ToolOutcome:
        """Wait for the client's ToolResult for a call it was sent (bounded)."""
        future: asyncio.Future[ToolOutcome] = asyncio.get_running_loop().create_future()
        self._waiting[call.call_id] = future
        try:
            return await asyncio.wait_for(future, CLIENT_TOOL_TIMEOUT_S)
        except TimeoutError:
            return ToolOutcome(
                call.call_id, False, error=f"the client did not answer within {CLIENT_TOOL_TIMEOUT_S:.0f} s"
            )
        finally:
            self._waiting.pop(call.call_id, None)

    async def resolve_tool(self, result: pb.ToolResult) -> None:
        """A ToolResult from the client: hand it to the call waiting for it."""
        future = self._waiting.get(result.call_id)
        if future is None or future.done():
            await self.report(
                FailedPrecondition(f"tool_result.call_id: no tool call {quote(result.call_id)} is waiting")
            )
            return
        if result.WhichOneof("result") == "error":
            future.set_result(ToolOutcome(result.call_id, False, error=result.error))
            return
        try:
            load_json(result.output_json, where="tool_result.output_json")
        except InvalidArgument as exc:
            future.set_result(ToolOutcome(result.call_id, False, error=f"the client's {exc.message}"))
            return
        future.set_result(ToolOutcome(result.call_id, True, output_json=result.output_json))


class _StreamSink:
    """A turn's view of its stream: events out, client tool calls answered from the stream."""

    def __init__(self, session: StreamSession, turn_id: str, speculation: Speculation | None = None) -> None:
        self._session = session
        self._turn_id = turn_id
        self._speculation = speculation
        self.client_tools = session.client_tools
        self.speaker: Speaker | None = None  # voice: the answer is also spoken

    async def text(self, delta: str) -> None:
        if self.speaker is not None:
            self.speaker.feed(delta)
        await self._session.put(self._turn_id, agent_text=pb.AgentText(delta=delta))

    async def tool_call(self, call: ToolCallInfo) -> None:
        runs_on = pb.ToolCall.RUNS_ON_CLIENT if call.runs_on == "client" else pb.ToolCall.RUNS_ON_SERVER
        event = pb.ToolCall(call_id=call.call_id, name=call.name, arguments_json=call.arguments_json, runs_on=runs_on)
        await self._session.put(self._turn_id, tool_call=event)

    async def tool_result(self, outcome: ToolOutcome) -> None:
        event = pb.ToolCallResult(
            call_id=outcome.call_id, ok=outcome.ok, queue_ms=outcome.queue_ms, run_ms=outcome.run_ms
        )
        if outcome.ok:
            event.output_json = outcome.output_json
        else:
            event.error = outcome.error
        await self._session.put(self._turn_id, tool_result=event)

    async def ask_client(self, call: ToolCallInfo) -> ToolOutcome:
        return await self._session.ask_client(call)

    async def confirmed(self) -> None:
        if self._speculation is not None:
            await self._speculation.wait()  # a dropped speculation is cancelled while it waits here


def _after(first: Callable[[], Awaitable[None]], then: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    async def both() -> None:
        await first()
        await then()

    return both
