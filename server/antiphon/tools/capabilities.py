"""Host capabilities a tool may import, mediated by the host: ``http_fetch``.

A module can only reach the outside world through a host function, and only a
module whose manifest lists the capability gets that function linked. The host
then decides, per call, against the calling tenant's policy:

- only ``http`` and ``https`` GET requests, to URLs on the tenant's allow-list
  (an exact origin such as ``https://api.example.com``, or a prefix with a path
  such as ``https://api.example.com/v1/``);
- no redirects (a redirect could leave the allow-list), no proxies from the
  environment, no user-info in URLs, no ``.``/``..`` path segments;
- a timeout (never beyond the call's own wall-clock deadline) and a cap on the
  response size.

The guest-side ABI (import ``antiphon.http_fetch``) is documented in tools/README.md.
"""

from __future__ import annotations

import http.client
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

# Results the guest sees from http_fetch (a body length when non-negative).
HTTP_DENIED: Final = -1
HTTP_NETWORK: Final = -2
HTTP_TOO_LARGE: Final = -3
HTTP_BAD_REQUEST: Final = -4
HTTP_STATUS: Final = -5

MAX_URL_BYTES: Final = 8192
MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024
_CHUNK_BYTES = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
_DOT_SEGMENT = re.compile(r"(^|/)(\.|%2e){1,2}(/|$)", re.IGNORECASE)
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


@dataclass(frozen=True, slots=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port


def _parse_or_reason(url: str) -> _Target | str:
    """The parts of an http(s) URL the policy compares, or why it is unusable."""
    if _FORBIDDEN_CHARS.search(url):
        return "spaces, control characters and backslashes are not allowed"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return "not a URL"
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        return "only http and https URLs are allowed"
    if not parts.hostname:
        return "the URL has no host"
    if parts.username is not None or parts.password is not None:
        return "user-info in URLs is not allowed"
    if _DOT_SEGMENT.search(parts.path):
        return "'.' and '..' path segments are not allowed"
    return _Target(scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme], parts.path or "/")


def _parse(url: str) -> _Target | None:
    target = _parse_or_reason(url)
    return target if isinstance(target, _Target) else None


@dataclass(frozen=True, slots=True)
class HttpPolicy:
    """What one tenant's tools may fetch. The default allows nothing."""

    allow: tuple[str, ...] = ()
    timeout_s: float = 5.0
    max_response_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        if isinstance(self.allow, str):
            raise ValueError("HttpPolicy.allow: must be a sequence of URLs, not one string")
        for i, entry in enumerate(self.allow):
            where = f"HttpPolicy.allow[{i}]"
            target = _parse_or_reason(entry)
            if isinstance(target, str):
                raise ValueError(f"{where}: {target}: {entry!r}")
            parts = urllib.parse.urlsplit(entry)
            if parts.query or parts.fragment:
                raise ValueError(f"{where}: an origin or a URL prefix, without query or fragment: {entry!r}")
        if not 0 < self.timeout_s <= 60:
            raise ValueError(f"HttpPolicy.timeout_s: must be in (0, 60], got {self.timeout_s}")
        if not 1 <= self.max_response_bytes <= MAX_RESPONSE_BYTES:
            raise ValueError(f"HttpPolicy.max_response_bytes: must be 1..{MAX_RESPONSE_BYTES}")

    def allows(self, url: str) -> bool:
        """True when ``url`` matches an allow-list entry: same origin and, if the entry has a path, below it."""
        target = _parse(url)
        if target is None:
            return False
        for entry in self.allow:
            rule = _parse(entry)
            if rule is None or rule.origin != target.origin:
                continue
            has_path = urllib.parse.urlsplit(entry).path not in ("", "/")
            if not has_path:
                return True
            prefix = rule.path if rule.path.endswith("/") else rule.path + "/"
            if target.path == rule.path or target.path.startswith(prefix):
                return True
        return False


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # urllib then raises HTTPError for the 3xx: reported as HTTP_STATUS


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


def http_fetch(
    url: str, policy: HttpPolicy, *, max_bytes: int, deadline: float, is_cancelled: Callable[[], bool]
) -> bytes | int:
    """GET ``url`` under ``policy``: the body, or a negative HTTP_* code.

    Blocking: it runs on the worker thread that runs the tool. ``deadline`` is a
    ``time.monotonic()`` instant (the call's own deadline bounds the fetch);
    ``max_bytes`` is the guest's buffer size, capped again by the policy.
    """
    if _parse(url) is None:
        return HTTP_BAD_REQUEST
    if not policy.allows(url):
        return HTTP_DENIED
    limit = min(max_bytes, policy.max_response_bytes)
    deadline = min(deadline, time.monotonic() + policy.timeout_s)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return HTTP_NETWORK
    request = urllib.request.Request(url, method="GET", headers={"User-Agent": "antiphon-tool/1"})
    try:
        with _OPENER.open(request, timeout=remaining) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > limit:
                return HTTP_TOO_LARGE
            body = bytearray()
            while len(body) <= limit:
                if is_cancelled() or time.monotonic() >= deadline:
                    return HTTP_NETWORK
                chunk = response.read(min(_CHUNK_BYTES, limit + 1 - len(body)))
                if not chunk:
                    return bytes(body)
                body += chunk
            return HTTP_TOO_LARGE
    except urllib.error.HTTPError as exc:
        exc.close()
        return HTTP_STATUS
    except (http.client.HTTPException, OSError):  # URLError and timeouts are OSErrors
        return HTTP_NETWORK
