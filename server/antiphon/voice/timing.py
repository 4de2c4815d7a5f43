"""Per-turn voice latency: the stages from the end of the user's speech to the first audio sent.

Audio positions become server time through the moment their chunk arrived: a
chunk received at wall time t that brings the stream to audio position P puts
audio position A at t - (P - A). For a client streaming in real time that is
when the user actually stopped talking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from antiphon.v1 import events_pb2 as pb


@dataclass(slots=True)
class VoiceTiming:
    speech_end: float  # perf_counter time of the end of the user's speech
    detected: float  # when the endpointer ended the turn
    transcript: float  # when the final transcript was ready
    stt_s: float  # recognition compute of that transcript
    first_audio: float | None = None
    early_start: bool = False  # the answer began before the endpointer confirmed the turn
    tts_s: float = 0.0
    audio_out_ms: float = 0.0

    @staticmethod
    def at_audio(received: float, position_ms: float, audio_ms: float) -> float:
        """Server time of audio position `audio_ms`, given that the chunk that brought the stream
        to `position_ms` arrived at `received`."""
        return received - max(0.0, position_ms - audio_ms) / 1000

    def fill(self, latency: pb.Latency, state: Any) -> None:
        """Complete a turn_end's latency (state: the TurnState; its clock starts when the turn ran).

        The stages split the user's wait along the critical path: each counts from where the
        previous one ended, so they add up to voice_to_voice_ms, and work done while the
        endpointer was still waiting (the early transcript, a speculative start) counts 0.
        """
        first_token = state.started + state.first_sent_s if state.first_sent_s is not None else None
        latency.stt_ms = self.stt_s * 1000
        latency.tts_ms = self.tts_s * 1000
        latency.audio_out_ms = self.audio_out_ms
        latency.early_start = self.early_start
        latency.endpoint_ms = _ms(self.speech_end, self.detected)
        transcript = max(self.detected, self.transcript)
        latency.transcript_ms = _ms(self.detected, transcript)
        if first_token is None:
            return
        token = max(transcript, first_token)
        latency.llm_first_token_ms = _ms(transcript, token)
        if self.first_audio is not None:
            latency.first_audio_ms = _ms(token, self.first_audio)
            latency.voice_to_voice_ms = _ms(self.speech_end, self.first_audio)


def _ms(a: float, b: float) -> float:
    return max(0.0, (b - a) * 1000)
