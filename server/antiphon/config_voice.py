"""Settings of the voice path (section `voice`): limits per stream and the pipeline's timing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from antiphon.config_base import require as _require


@dataclass
class VoiceSettings:
    # auto: voice when its models are installed (else audio configs get UNIMPLEMENTED);
    # on: they must be (the server refuses to start without them); off: text only.
    enabled: Literal["auto", "on", "off"] = "auto"
    # Agent profile of voice sessions that name none; empty: the profile "voice" where one
    # exists (short, speakable answers), else the server's default_agent.
    default_agent: str = ""
    # Largest AudioChunk accepted, in ms of audio (larger: INVALID_ARGUMENT).
    max_chunk_ms: int = 200
    # A stream with no speech for this long ends cleanly (session_ended "idle"); 0: never.
    max_idle_s: int = 600
    # Turn detection defaults (the session's `vad` block overrides them).
    vad_threshold: float = 0.5
    vad_prefix_ms: int = 300
    vad_silence_ms: int = 400
    vad_min_speech_ms: int = 250
    vad_max_turn_ms: int = 30_000
    barge_in_min_speech_ms: int = 250
    # A partial transcript at most this often while the user speaks; 0: none.
    partial_interval_ms: int = 400
    # Start decoding the utterance after this much silence, before the turn is confirmed,
    # so the final transcript is ready when the endpointer decides.
    early_decode_silence_ms: int = 160
    # Start the answer on that early transcript, held back until the endpointer confirms the turn
    # (dropped without a trace if the user goes on speaking); tools never run before confirmation.
    speculate: bool = True
    # The first spoken piece ends after this many words even without punctuation (0: at the first
    # clause or sentence end): the first audio waits for a few words, not a sentence.
    first_piece_max_words: int = 6
    # How far the spoken answer may run ahead of real time; what is ahead is not "played"
    # when the user barges in.
    output_lead_ms: int = 160
    # Threads for speech recognition and for synthesis (each model gets one intra-op thread per worker).
    stt_workers: int = 1
    tts_workers: int = 1
    # Synthesized short phrases kept for reuse (greetings, confirmations).
    phrase_cache_mb: int = 8

    def __post_init__(self) -> None:
        _require(self.enabled in ("auto", "on", "off"), "voice.enabled", "must be auto, on or off")
        _require(20 <= self.max_chunk_ms <= 1000, "voice.max_chunk_ms", "must be 20..1000")
        _require(0 <= self.max_idle_s <= 86_400, "voice.max_idle_s", "must be 0..86400")
        _require(0 < self.vad_threshold < 1, "voice.vad_threshold", "must be in (0, 1)")
        _require(0 <= self.vad_prefix_ms <= 10_000, "voice.vad_prefix_ms", "must be 0..10000")
        _require(1 <= self.vad_silence_ms <= 60_000, "voice.vad_silence_ms", "must be 1..60000")
        _require(0 <= self.vad_min_speech_ms <= 10_000, "voice.vad_min_speech_ms", "must be 0..10000")
        _require(
            self.vad_min_speech_ms < self.vad_max_turn_ms <= 3_600_000,
            "voice.vad_max_turn_ms",
            "must exceed vad_min_speech_ms and be at most 3600000",
        )
        _require(0 <= self.barge_in_min_speech_ms <= 10_000, "voice.barge_in_min_speech_ms", "must be 0..10000")
        _require(0 <= self.partial_interval_ms <= 10_000, "voice.partial_interval_ms", "must be 0..10000")
        _require(0 <= self.early_decode_silence_ms <= 10_000, "voice.early_decode_silence_ms", "must be 0..10000")
        _require(0 <= self.first_piece_max_words <= 40, "voice.first_piece_max_words", "must be 0..40")
        _require(0 <= self.output_lead_ms <= 5_000, "voice.output_lead_ms", "must be 0..5000")
        _require(1 <= self.stt_workers <= 16, "voice.stt_workers", "must be 1..16")
        _require(1 <= self.tts_workers <= 16, "voice.tts_workers", "must be 1..16")
        _require(0 <= self.phrase_cache_mb <= 1024, "voice.phrase_cache_mb", "must be 0..1024")
