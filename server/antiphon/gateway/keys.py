"""API keys and per-tenant quota overrides: a JSON file by default, Redis when workers share state.

A key reads ``ak_<key id>_<secret>``; only the SHA-256 digest of the whole key is
stored, and it is compared in constant time. The secret is shown once, at creation.

File store (``auth.keys_file``): one JSON document, rewritten atomically (temporary
file, fsync, rename) under an advisory lock, so the CLI and a running server can both
write it; the server re-reads it when its mtime, size or inode changes (checked on
every lookup, one ``stat``), so a revocation takes effect on the next call.

Redis store, keys (``{prefix}`` is ``context.redis_prefix``; ``{tenant}`` is a hash tag
so one tenant's keys share a cluster slot with its rate-limit buckets):
  {prefix}:gw:keys                 hash: key id -> JSON record
  {prefix}:gw:{tenant}:quota       hash: overrides (budget, rps, streams, tpm, aspm)
  {prefix}:gw:changed              pub/sub: "key:<id>" / "quota:<tenant>" after each change
A worker keeps what it looked up for at most ``auth.key_cache_ms`` (<= 1 s), and drops it
as soon as the change message arrives. Redis errors become Unavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from antiphon.errors import InvalidArgument, Unavailable

log = logging.getLogger(__name__)

KEY_RE = re.compile(r"^ak_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
TENANT_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
LABEL_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Compared against when a key id is unknown, so a miss costs what a hit costs.
_DUMMY_DIGEST = hashlib.sha256(b"antiphon: no such key").hexdigest()


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The key id of a well-formed key, else None (nothing about the key is looked up)."""
    m = KEY_RE.fullmatch(key)
    return m.group(1) if m else None


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    tenant: str
    subject: str
    roles: frozenset[str]
    labels: frozenset[str]
    digest: str
    description: str = ""
    created_us: int = 0
    revoked_us: int = 0

    @property
    def revoked(self) -> bool:
        return self.revoked_us > 0

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["roles"] = sorted(self.roles)
        d["labels"] = sorted(self.labels)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ApiKey:
        return cls(
            key_id=str(d["key_id"]),
            tenant=str(d["tenant"]),
            subject=str(d["subject"]),
            roles=frozenset(d["roles"]),
            labels=frozenset(d["labels"]),
            digest=str(d["digest"]),
            description=str(d.get("description", "")),
            created_us=int(d.get("created_us", 0)),
            revoked_us=int(d.get("revoked_us", 0)),
        )


def new_key(
    tenant: str, roles: Iterable[str], labels: Iterable[str] = (), subject: str = "", description: str = ""
) -> tuple[str, ApiKey]:
    """A fresh key: (the key text to hand to the client once, the record to store)."""
    check_tenant(tenant, "tenant")
    roles = frozenset(roles)
    if not roles:
        raise InvalidArgument("roles: at least one role is required")
    labels = frozenset(labels) or frozenset({"public"})
    for label in sorted(labels):
        if not LABEL_RE.fullmatch(label):
            raise InvalidArgument(f"acl_labels: {label!r} is not 1..64 of [A-Za-z0-9._:-]")
    if len(description) > 256:
        raise InvalidArgument("description: at most 256 characters")
    key_id = secrets.token_hex(8)
    text = f"ak_{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKey(
        key_id=key_id,
        tenant=tenant,
        subject=subject or f"key:{key_id}",
        roles=roles,
        labels=labels,
        digest=digest_of(text),
        description=description,
        created_us=time.time_ns() // 1000,
    )
    return text, record


def check_tenant(tenant: str, field: str) -> None:
    if not TENANT_RE.fullmatch(tenant):
        raise InvalidArgument(f"{field}: use 1..64 characters from [A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class Quota:
    """A tenant's overrides of the configured limits; None keeps the configured value, 0 = unlimited."""

    monthly_budget: float | None = None
    requests_per_s: float | None = None
    streams: int | None = None
    llm_tokens_per_min: int | None = None
    audio_s_per_min: float | None = None

    def merged(self, newer: Quota) -> Quota:
        return Quota(
            **{
                f.name: getattr(newer, f.name) if getattr(newer, f.name) is not None else getattr(self, f.name)
                for f in dataclasses.fields(self)
            }
        )

    def to_fields(self) -> dict[str, str]:
        """Redis hash / JSON fields of the overrides that are set."""
        return {QUOTA_FIELDS[k]: repr(v) for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> Quota:
        kwargs: dict[str, Any] = {}
        for attr, name in QUOTA_FIELDS.items():
            if name in fields:
                kwargs[attr] = int(float(fields[name])) if attr in _INT_QUOTAS else float(fields[name])
        return cls(**kwargs)


NO_QUOTA = Quota()

# Field names in Redis (the rate-limit script reads them) and in the keys file.
QUOTA_FIELDS = {
    "monthly_budget": "budget",
    "requests_per_s": "rps",
    "streams": "streams",
    "llm_tokens_per_min": "tpm",
    "audio_s_per_min": "aspm",
}
_INT_QUOTAS = frozenset({"streams", "llm_tokens_per_min"})


class KeyStore(ABC):
    """Where API keys and quota overrides live."""

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    @abstractmethod
    async def get(self, key_id: str) -> ApiKey | None: ...

    @abstractmethod
    async def add(self, key: ApiKey) -> None: ...

    @abstractmethod
    async def list(self, tenant: str | None) -> list[ApiKey]:
        """Keys of one tenant (None: every tenant), oldest first."""

    @abstractmethod
    async def revoke(self, key_id: str) -> ApiKey | None:
        """Mark a key revoked (idempotent); None if there is no such key."""

    @abstractmethod
    async def quota(self, tenant: str) -> Quota: ...

    @abstractmethod
    async def set_quota(self, tenant: str, quota: Quota, *, reset: bool = False) -> Quota:
        """Apply overrides (after clearing them all when ``reset``); returns the tenant's overrides."""

    def quota_now(self, tenant: str) -> Quota:
        """The overrides this process knows now, without waiting (used by the in-process limiter)."""
        return NO_QUOTA

    async def verify(self, key: str) -> ApiKey | None:
        """The active key record for a presented key, else None. Constant-time digest comparison."""
        key_id = key_id_of(key)
        if key_id is None:
            return None
        record = await self.get(key_id)
        expected = record.digest if record is not None else _DUMMY_DIGEST
        matches = hmac.compare_digest(expected, digest_of(key))
        if record is None or not matches or record.revoked:
            return None
        return record


# --- file --------------------------------------------------------------------------------------------------------


def _empty_state() -> dict[str, Any]:
    return {"version": 1, "keys": {}, "quotas": {}}


class FileKeyStore(KeyStore):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._state = _empty_state()
        self._keys: dict[str, ApiKey] = {}
        self._quotas: dict[str, Quota] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._refresh()

    def _refresh(self) -> None:
        """Re-read the file when it changed (another process wrote it)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._stamp is not None:
                self._apply(_empty_state(), None)
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        try:
            state = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:  # keep serving what we had; the next change may fix it
            log.error("cannot read the keys file %s: %s", self.path, exc)
            return
        self._apply(state, stamp)

    def _apply(self, state: dict[str, Any], stamp: tuple[int, int, int] | None) -> None:
        self._state = state
        self._keys = {k: ApiKey.from_json(v) for k, v in state.get("keys", {}).items()}
        self._quotas = {t: Quota.from_fields(v) for t, v in state.get("quotas", {}).items()}
        self._stamp = stamp

    def _mutate(self, change: Callable[[dict[str, Any]], Any]) -> Any:
        """Read-modify-write under an exclusive lock; the file is replaced atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = json.loads(self.path.read_text()) if self.path.exists() else _empty_state()
                result = change(state)
                fd, tmp = tempfile.mkstemp(prefix=self.path.name, suffix=".tmp", dir=self.path.parent)
                try:
                    with os.fdopen(fd, "w") as out:
                        json.dump(state, out, indent=1, sort_keys=True)
                        out.flush()
                        os.fsync(out.fileno())
                    os.chmod(tmp, 0o600)
                    os.replace(tmp, self.path)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self._stamp = None  # re-read what was written, with its new stamp
        self._refresh()
        return result

    async def _write(self, change: Callable[[dict[str, Any]], Any]) -> Any:
        try:
            return await asyncio.to_thread(self._mutate, change)
        except (OSError, ValueError) as exc:
            log.error("cannot write the keys file %s: %s", self.path, exc)
            raise Unavailable("the key store cannot be written; the server log has details") from None

    async def get(self, key_id: str) -> ApiKey | None:
        self._refresh()
        return self._keys.get(key_id)

    async def add(self, key: ApiKey) -> None:
        def change(state: dict[str, Any]) -> None:
            state.setdefault("keys", {})[key.key_id] = key.to_json()

        await self._write(change)

    async def list(self, tenant: str | None) -> list[ApiKey]:
        self._refresh()
        keys = [k for k in self._keys.values() if tenant is None or k.tenant == tenant]
        return sorted(keys, key=lambda k: (k.created_us, k.key_id))

    async def revoke(self, key_id: str) -> ApiKey | None:
        now_us = time.time_ns() // 1000

        def change(state: dict[str, Any]) -> dict[str, Any] | None:
            record = state.setdefault("keys", {}).get(key_id)
            if record is not None and not record.get("revoked_us"):
                record["revoked_us"] = now_us
            return None if record is None else dict(record)

        record = await self._write(change)
        return None if record is None else ApiKey.from_json(record)

    async def quota(self, tenant: str) -> Quota:
        self._refresh()
        return self._quotas.get(tenant, NO_QUOTA)

    def quota_now(self, tenant: str) -> Quota:
        return self._quotas.get(tenant, NO_QUOTA)

    async def set_quota(self, tenant: str, quota: Quota, *, reset: bool = False) -> Quota:
        def change(state: dict[str, Any]) -> dict[str, str]:
            quotas = state.setdefault("quotas", {})
            current = Quota() if reset else Quota.from_fields(quotas.get(tenant, {}))
            fields = current.merged(quota).to_fields()
            if fields:
                quotas[tenant] = fields
            else:
                quotas.pop(tenant, None)
            return fields

        return Quota.from_fields(await self._write(change))
