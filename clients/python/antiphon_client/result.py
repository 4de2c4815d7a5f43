"""What a turn comes to, assembled from its events."""

from __future__ import annotations

from dataclasses import dataclass, field

from antiphon.v1 import events_pb2 as pb


@dataclass
class TurnResult:
    """A finished turn, assembled from its events."""

    turn_id: str = ""
    text: str = ""
    turn_end: pb.TurnEnd | None = None
    errors: list[pb.Error] = field(default_factory=list)
