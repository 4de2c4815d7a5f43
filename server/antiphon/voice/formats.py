"""Client audio formats: validation, and conversion to and from 16-bit PCM.

A session names its input and output formats once (proto AudioFormat); every
chunk after that is checked against them here, on the per-chunk path, so the
checks are integer arithmetic and the conversions are the native codecs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from antiphon.errors import InvalidArgument
from antiphon.native import g711


class Encoding(enum.Enum):
    PCM16 = "pcm16"
    MULAW = "mulaw"
    ALAW = "alaw"


PCM16_RATES_HZ = (8000, 16000, 24000, 48000)
G711_RATE_HZ = 8000


@dataclass(frozen=True, slots=True)
class AudioSpec:
    encoding: Encoding
    sample_rate_hz: int

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding is Encoding.PCM16 else 1

    def bytes_for_ms(self, ms: float) -> int:
        return int(self.sample_rate_hz * ms / 1000) * self.bytes_per_sample

    def duration_ms(self, n_bytes: int) -> float:
        return n_bytes / self.bytes_per_sample * 1000 / self.sample_rate_hz

    def describe(self) -> str:
        return f"{self.encoding.value} at {self.sample_rate_hz} Hz"


def parse_spec(field: str, encoding: Encoding | None, sample_rate_hz: int, channels: int) -> AudioSpec:
    """The checks behind a session's input_audio/output_audio; errors name the field."""
    if encoding is None:
        raise InvalidArgument(f"{field}.encoding: must be PCM16, MULAW or ALAW")
    if channels not in (0, 1):
        raise InvalidArgument(f"{field}.channels: only mono (1) is supported, got {channels}")
    if encoding is Encoding.PCM16:
        if sample_rate_hz not in PCM16_RATES_HZ:
            rates = ", ".join(str(r) for r in PCM16_RATES_HZ)
            raise InvalidArgument(f"{field}.sample_rate_hz: PCM16 supports {rates} Hz, got {sample_rate_hz}")
    elif sample_rate_hz not in (0, G711_RATE_HZ):
        raise InvalidArgument(f"{field}.sample_rate_hz: {encoding.name} is 8000 Hz, got {sample_rate_hz}")
    return AudioSpec(encoding, sample_rate_hz or G711_RATE_HZ)


class ChunkDecoder:
    """Checks one stream's input chunks and turns them into PCM16 at the input rate."""

    __slots__ = ("_max_bytes", "_spec")

    def __init__(self, spec: AudioSpec, max_chunk_ms: int) -> None:
        self._spec = spec
        self._max_bytes = spec.bytes_for_ms(max_chunk_ms)

    @property
    def spec(self) -> AudioSpec:
        return self._spec

    def decode(self, data: bytes) -> bytes:
        n = len(data)
        spec = self._spec
        if n > self._max_bytes:
            raise InvalidArgument(
                f"audio.data: {n} bytes is {spec.duration_ms(n):.0f} ms of {spec.describe()}; "
                f"send at most {self._max_bytes} bytes per chunk"
            )
        if spec.encoding is Encoding.PCM16:
            if n & 1:
                raise InvalidArgument(f"audio.data: PCM16 needs an even number of bytes, got {n}")
            return data
        if spec.encoding is Encoding.MULAW:
            return g711.ulaw_decode(data)
        return g711.alaw_decode(data)


def encode_pcm16(spec: AudioSpec, pcm16: bytes) -> bytes:
    """PCM16 at the spec's rate -> the spec's encoding."""
    if spec.encoding is Encoding.PCM16:
        return pcm16
    if spec.encoding is Encoding.MULAW:
        return g711.ulaw_encode(pcm16)
    return g711.alaw_encode(pcm16)
