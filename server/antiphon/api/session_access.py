"""Who may open, read and delete a session: its owner, and roles granted the session actions.

Another principal learns nothing: the answer is the same NOT_FOUND as for a session that does
not exist. What a reader may see inside a session (turns and summary derived from documents)
is decided by their ACL (context/derived.py).
"""

from __future__ import annotations

from antiphon.context.sessions import SessionRecord
from antiphon.errors import NotFound
from antiphon.gateway.principal import Principal
from antiphon.gateway.rbac import allowed


def not_found(session_id: str) -> NotFound:
    return NotFound(f"session_id: no session {session_id!r}")  # ids are checked: at most 128 characters


def may_use(principal: Principal, record: SessionRecord) -> bool:
    """Read or continue: the owner, or a role with sessions.read_any."""
    return record.owner == principal.subject or allowed(principal, "sessions.read_any")


def may_delete(principal: Principal, record: SessionRecord) -> bool:
    """The owner, or a role with sessions.delete_any (tenant admins: the right to be forgotten)."""
    return record.owner == principal.subject or allowed(principal, "sessions.delete_any")


def require_use(principal: Principal, record: SessionRecord | None, session_id: str) -> SessionRecord:
    if record is None or not may_use(principal, record):
        raise not_found(session_id)
    return record
