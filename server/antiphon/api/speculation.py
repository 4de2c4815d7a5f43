"""Starting the answer before the user's turn is confirmed.

The endpointer waits `silence_ms` (400 ms) before it ends a turn. Most of that
wait is spent on a pause that does end the turn, so after `early_decode_silence_ms`
the utterance is transcribed and, if the session is idle, the agent's turn starts
on that transcript at once: the model reads the prompt and the first clause is
synthesised while the endpointer is still waiting. Everything the turn would send
waits behind a gate. When the endpointer ends the turn on the same audio, the
gate opens and the answer flows at once; when the user speaks again instead, the
turn is cancelled and leaves no trace: no events, no history.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from antiphon.voice.timing import VoiceTiming


@dataclass(eq=False)
class Speculation:
    """One speculative turn. key: the utterance's (start_sample, end_sample)."""

    key: tuple[int, int]
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    timing: VoiceTiming | None = None
    cancelled: bool = False
    turn_id: str = ""

    @property
    def committed(self) -> bool:
        return self.gate.is_set()

    def commit(self, timing: VoiceTiming) -> None:
        self.timing = timing
        self.gate.set()

    async def wait(self) -> None:
        if not self.gate.is_set():
            await self.gate.wait()
