"""Role-based access: which roles may call which RPCs, and take which actions inside them.

The policy comes from the config (``auth.role_methods``, ``auth.role_actions``).
The interceptor checks the method, and the action bound to it (``METHOD_ACTIONS``),
before any handler work; handlers check finer actions with ``require``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from antiphon.config import EXPLICIT_ACTIONS, GATEWAY_ACTIONS, AuthSettings
from antiphon.errors import PermissionDenied
from antiphon.gateway.context import current_call
from antiphon.gateway.principal import Principal

# Actions a method implies: a caller without the action is refused before the handler runs.
METHOD_ACTIONS: Mapping[str, str] = {
    "/antiphon.v1.Tools/RegisterTool": "tools.register",
    "/antiphon.v1.Tools/RemoveTool": "tools.register",
    "/antiphon.v1.Context/PutDocuments": "documents.put",
    "/antiphon.v1.Context/DeleteDocuments": "documents.put",
    "/antiphon.v1.Admin/GetUsage": "usage.read",
    "/antiphon.v1.Admin/SetQuota": "quota.set",
    "/antiphon.v1.Admin/CreateKey": "keys.manage",
    "/antiphon.v1.Admin/ListKeys": "keys.manage",
    "/antiphon.v1.Admin/RevokeKey": "keys.manage",
}

DENIED = "permission denied"


class _Patterns:
    """Full method names: "*" (any), "/pkg.Service/*" (a service) or "/pkg.Service/Method"."""

    __slots__ = ("_any", "_exact", "_services")

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = list(patterns)
        self._any = "*" in patterns
        self._exact = frozenset(p for p in patterns if not p.endswith("*"))
        self._services = tuple(p[:-1] for p in patterns if p.endswith("/*"))

    def match(self, method: str) -> bool:
        return self._any or method in self._exact or method.startswith(self._services)


class Policy:
    def __init__(
        self,
        role_methods: Mapping[str, Iterable[str]],
        role_actions: Mapping[str, Iterable[str]],
        public_methods: Iterable[str] = (),
    ) -> None:
        self._methods = {role: _Patterns(p) for role, p in role_methods.items()}
        wildcard = frozenset(GATEWAY_ACTIONS) - EXPLICIT_ACTIONS
        self._actions = {
            role: (frozenset(a) - {"*"}) | (wildcard if "*" in a else frozenset()) for role, a in role_actions.items()
        }
        self._public = _Patterns(public_methods)
        self._decisions: dict[tuple[frozenset[str], str], bool] = {}

    @classmethod
    def from_settings(cls, auth: AuthSettings) -> Policy:
        return cls(auth.role_methods, auth.role_actions, auth.public_methods)

    @property
    def roles(self) -> frozenset[str]:
        return frozenset(self._methods) | frozenset(self._actions)

    def is_public(self, method: str) -> bool:
        return self._public.match(method)

    def allows_method(self, roles: frozenset[str], method: str) -> bool:
        """May a caller with these roles call this method (and take the action it implies)?"""
        key = (roles, method)
        decision = self._decisions.get(key)
        if decision is None:
            decision = any(r in self._methods and self._methods[r].match(method) for r in roles)
            action = METHOD_ACTIONS.get(method)
            if decision and action is not None:
                decision = self.allows_roles(roles, action)
            if len(self._decisions) > 65_536:  # bounded: role sets come from tokens
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def allows_roles(self, roles: frozenset[str], action: str) -> bool:
        return any(action in self._actions.get(r, ()) for r in roles)

    def allows(self, principal: Principal, action: str) -> bool:
        return self.allows_roles(principal.roles, action)

    def require(self, principal: Principal, action: str) -> None:
        if action not in GATEWAY_ACTIONS:
            raise ValueError(f"unknown action {action!r}")  # a programming error, not a client's
        if not self.allows(principal, action):
            raise PermissionDenied(DENIED)


DEFAULT_POLICY = Policy.from_settings(AuthSettings())


def _policy() -> Policy:
    """Inside an RPC the serving gateway's policy applies; elsewhere the default policy."""
    call = current_call()
    return call.policy if call is not None and call.policy is not None else DEFAULT_POLICY


def require(principal: Principal, action: str) -> None:
    """Raise PermissionDenied unless one of the principal's roles grants ``action``."""
    _policy().require(principal, action)


def allowed(principal: Principal, action: str) -> bool:
    """Does one of the principal's roles grant ``action``? (For checks that answer NOT_FOUND.)"""
    if action not in GATEWAY_ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    return _policy().allows(principal, action)
