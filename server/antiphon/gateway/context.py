"""The caller of the RPC being served, in a context variable the gateway sets before the handler runs.

grpc.aio runs each RPC in its own task; the interceptor's wrapper sets one
``CallContext`` there, and tasks the handler creates (readers, turns) copy it.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass
from typing import TYPE_CHECKING

from antiphon.gateway.principal import Principal

if TYPE_CHECKING:
    from antiphon.gateway.rbac import Policy


@dataclass(frozen=True, slots=True)
class CallContext:
    principal: Principal
    # The credential's limit scope: "ak:<key id>", "jwt:<subject>" or "embedded".
    credential: str
    method: str
    # Event-loop time (loop.time()) by which the call must end: the client's deadline or the
    # server's stream limit, whichever is earlier; None when neither applies.
    deadline: float | None = None
    # The RBAC policy of the server serving the call (``rbac.require`` checks actions against it).
    policy: Policy | None = None


_call: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("antiphon_call", default=None)


def set_call(call: CallContext) -> None:
    _call.set(call)


def current_call() -> CallContext | None:
    return _call.get()


def current_principal() -> Principal | None:
    call = _call.get()
    return None if call is None else call.principal


def current_credential() -> str:
    call = _call.get()
    return "" if call is None else call.credential


def remaining_s() -> float | None:
    """Seconds left before the current call's deadline (never negative); None without a deadline.

    Handlers pass this on to what they wait for (a model call, a Redis read) so that work
    stops when nobody waits for its answer any more.
    """
    call = _call.get()
    if call is None or call.deadline is None:
        return None
    return max(0.0, call.deadline - asyncio.get_running_loop().time())
