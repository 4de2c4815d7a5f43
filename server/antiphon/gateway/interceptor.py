"""The gateway as one grpc.aio server interceptor: authenticate, authorise, limit, meter.

For every method that is not public (health, reflection), the interceptor hands gRPC
a wrapped handler of the same kind. The wrapper runs in the RPC's own task, before
the servicer's code (nothing of it runs for a refused call), in this order:

  1. authentication          UNAUTHENTICATED (one message for every failure)
  2. RBAC on the method      PERMISSION_DENIED
     and its implied action
  3. request rate            RESOURCE_EXHAUSTED + RetryInfo
  4. budget (metered calls)  RESOURCE_EXHAUSTED + RetryInfo (next month)
  5. stream slot (streams)   RESOURCE_EXHAUSTED + RetryInfo

then sets the call's context variable (principal, credential, deadline, policy),
decodes the request and calls the servicer. gRPC hands the wrapper raw bytes, so no
request is parsed before its caller is admitted; an undecodable one is INVALID_ARGUMENT
(on a request stream, each message is decoded as the servicer reads it).
Streams end with DEADLINE_EXCEEDED past ``limits.max_stream_s``; unary responses
that carry usage (tool calls, documents, searches) are metered.
A RESOURCE_EXHAUSTED carries ``grpc-status-details-bin`` (google.rpc.Status with a
RetryInfo) and a plain ``retry-after-ms`` trailer.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from prometheus_client import CollectorRegistry

from antiphon.config import Settings
from antiphon.errors import (
    AntiphonError,
    DeadlineExceeded,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    rpc_status,
)
from antiphon.gateway.auth import Authenticator, Unauthenticated
from antiphon.gateway.context import CallContext, current_call, set_call
from antiphon.gateway.keys import FileKeyStore, KeyStore
from antiphon.gateway.limits import Limiter, MemoryLimiter, RateLimited, RedisLimiter
from antiphon.gateway.metrics import GatewayMetrics
from antiphon.gateway.principal import EMBEDDED_PRINCIPAL, Principal
from antiphon.gateway.rbac import DENIED, Policy
from antiphon.gateway.redis_keys import RedisKeyStore
from antiphon.gateway.usage import BUDGETED_METHODS, RESPONSE_METERS, MemoryLedger, Metering, RedisLedger
from antiphon.redis_support import close_redis, redis_client

log = logging.getLogger(__name__)

# How long a refused request stream may take to deliver its first message (a client that sends none
# gets its status after this).
FIRST_MESSAGE_WAIT_S = 0.5

Behavior = Callable[..., Any]


def _reason(exc: AntiphonError) -> str:
    if isinstance(exc, Unauthenticated):
        return "unauthenticated"
    if isinstance(exc, PermissionDenied):
        return "permission_denied"
    if isinstance(exc, RateLimited):
        return "rate_limited"
    if isinstance(exc, ResourceExhausted):
        return "budget"
    return "unavailable"


async def abort_with(context: grpc.aio.ServicerContext, exc: AntiphonError) -> None:
    """End the call with the error's status (and retry trailers when it has a retry delay)."""
    code, message, trailers = rpc_status(exc)
    await context.abort(code, message, trailing_metadata=trailers)


@dataclass
class Gateway:
    settings: Settings
    keys: KeyStore
    auth: Authenticator
    policy: Policy
    limiter: Limiter
    metering: Metering
    metrics: GatewayMetrics
    redis: Any = None

    def __post_init__(self) -> None:
        self.interceptor = GatewayInterceptor(self)

    async def start(self) -> None:
        await self.keys.start()
        await self.limiter.start()
        await self.metering.start()

    async def aclose(self) -> None:
        await self.metering.aclose()
        await self.limiter.aclose()
        await self.keys.aclose()
        if self.redis is not None:
            await close_redis(self.redis)
            self.redis = None

    def principal_of(self, _context: grpc.aio.ServicerContext) -> Principal:
        """The caller of the RPC being served (App.principal_of)."""
        call = current_call()
        if call is not None:
            return call.principal
        if not self.auth.required:
            return EMBEDDED_PRINCIPAL
        raise Unauthenticated  # a handler the gateway did not wrap: fail closed


def build_gateway(settings: Settings, registry: CollectorRegistry) -> Gateway:
    """Key store, limiter and ledger in process, or in Redis when context.sessions = "redis"."""
    c = settings.context
    metrics = GatewayMetrics.create(registry)
    redis: Any = None
    keys: KeyStore
    limiter: Limiter
    if c.sessions == "redis":
        redis = redis_client(c)
        keys = RedisKeyStore(c, prefix=c.redis_prefix, cache_ms=settings.auth.key_cache_ms, client=redis)
        limiter = RedisLimiter(settings.limits, keys, redis, prefix=c.redis_prefix)
        ledger: MemoryLedger | RedisLedger = RedisLedger(redis, prefix=c.redis_prefix)
    else:
        keys = FileKeyStore(settings.auth.keys_file)
        limiter = MemoryLimiter(settings.limits, keys)
        ledger = MemoryLedger()
    metering = Metering(ledger, limiter, keys, limits=settings.limits, pricing=settings.pricing, metrics=metrics)
    return Gateway(
        settings=settings,
        keys=keys,
        auth=Authenticator(settings.auth, keys),
        policy=Policy.from_settings(settings.auth),
        limiter=limiter,
        metering=metering,
        metrics=metrics,
        redis=redis,
    )


class GatewayInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no type stubs
    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway
        self._max_stream_s = gateway.settings.limits.max_stream_s
        self._wrapped: dict[str, tuple[Any, Any]] = {}
        self._stream_ids = itertools.count()
        self._instance = secrets.token_hex(4)
        self._admitted: dict[str, Any] = {}  # tenant -> its requests counter (labels() costs ~1 µs a call)

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or self._gw.policy.is_public(method):
            return handler
        entry = self._wrapped.get(method)
        if entry is None or entry[0] is not handler:
            entry = (handler, self._wrap(method, handler))
            self._wrapped[method] = entry
        return entry[1]

    async def _admit(
        self, context: grpc.aio.ServicerContext, method: str, stream_id: str | None, requests: Any = None
    ) -> CallContext:
        gw = self._gw
        tenant = ""
        try:
            identity = await gw.auth.authenticate(context.invocation_metadata())
            principal = identity.principal
            tenant = principal.tenant
            if not gw.policy.allows_method(principal.roles, method):
                raise PermissionDenied(DENIED)
            await gw.limiter.admit_request(tenant, identity.credential)
            if method in BUDGETED_METHODS:
                await gw.metering.check_budget(tenant)
            if stream_id is not None:
                await gw.limiter.open_stream(tenant, identity.credential, stream_id)
        except AntiphonError as exc:
            gw.metrics.rejected.labels(tenant, _reason(exc)).inc()
            if isinstance(exc, Unavailable):
                log.warning("gateway store unavailable for %s: %s", method, exc.message)
            if requests is not None:
                await _first_message_landed(requests)
            await abort_with(context, exc)
            raise  # unreachable: abort raises
        counter = self._admitted.get(tenant)
        if counter is None:
            counter = self._admitted[tenant] = gw.metrics.requests.labels(tenant)
        counter.inc()
        deadline = None
        remaining = context.time_remaining()
        if stream_id is not None and self._max_stream_s > 0:
            remaining = self._max_stream_s if remaining is None else min(remaining, self._max_stream_s)
        if remaining is not None:
            deadline = asyncio.get_running_loop().time() + remaining
        call = CallContext(principal, identity.credential, method, deadline, gw.policy)
        set_call(call)
        return call

    def _wrap(self, method: str, h: Any) -> Any:
        if not h.response_streaming:
            return self._wrap_unary(method, h)
        inner: Behavior = h.stream_stream if h.request_streaming else h.unary_stream
        limiter = self._gw.limiter
        body = _Body(h.request_deserializer)
        deserialize, request_streaming = body.deserialize, h.request_streaming

        async def stream(raw: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            stream_id = f"{self._instance}:{next(self._stream_ids)}"
            call = await self._admit(context, method, stream_id, raw if request_streaming else None)
            requests = _DecodedRequests(raw, body) if request_streaming else None
            try:
                if requests is not None:
                    request = requests
                else:
                    try:
                        request = deserialize(raw)
                    except Exception:  # DecodeError, or anything else the parser raises on hostile bytes
                        await body.refuse(raw, context)
                result = inner(request, context)
                if inspect.isawaitable(result):  # a handler that writes with context.write()
                    await result
                else:
                    async with contextlib.aclosing(result) as messages:
                        async for message in self._bounded(messages, context):
                            yield message
            except grpc.aio.AbortError:
                raise
            except Exception:
                await _refuse_bad_stream(context, requests)
                raise
            else:
                await _refuse_bad_stream(context, requests)
            finally:
                await limiter.close_stream(call.principal.tenant, call.credential, stream_id)

        factory = grpc.stream_stream_rpc_method_handler if h.request_streaming else grpc.unary_stream_rpc_method_handler
        # request_deserializer=None: the body arrives as bytes and is decoded only once the caller is admitted.
        return factory(stream, request_deserializer=None, response_serializer=h.response_serializer)

    def _wrap_unary(self, method: str, h: Any) -> Any:
        inner: Behavior = h.stream_unary if h.request_streaming else h.unary_unary
        meter = RESPONSE_METERS.get(method)
        metering = self._gw.metering
        body = _Body(h.request_deserializer)
        deserialize = body.deserialize

        async def unary(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            call = await self._admit(context, method, None)
            try:
                request = deserialize(raw)
            except Exception:  # as in stream()
                await body.refuse(raw, context)
            response = await inner(request, context)
            if meter is not None and response is not None:
                metering.record(call.principal.tenant, meter(request, response))
            return response

        async def client_stream(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            call = await self._admit(context, method, None, raw)
            requests = _DecodedRequests(raw, body)
            try:
                response = await inner(requests, context)
            except grpc.aio.AbortError:
                raise
            except Exception:
                await _refuse_bad_stream(context, requests)
                raise
            await _refuse_bad_stream(context, requests)
            if meter is not None and response is not None:
                metering.record(call.principal.tenant, meter(requests, response))
            return response

        if h.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                client_stream, request_deserializer=None, response_serializer=h.response_serializer
            )
        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=None, response_serializer=h.response_serializer
        )

    async def _bounded(self, messages: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """The handler's messages, until limits.max_stream_s: then DEADLINE_EXCEEDED (the handler is cancelled)."""
        if self._max_stream_s <= 0:
            async for message in messages:
                yield message
            return
        end = asyncio.get_running_loop().time() + self._max_stream_s
        while True:
            timeout = asyncio.timeout_at(end)
            try:
                async with timeout:
                    message = await anext(messages)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if not timeout.expired():
                    raise
                await abort_with(
                    context,
                    DeadlineExceeded(
                        f"the stream reached the server's limit of {self._max_stream_s:g} s (limits.max_stream_s); "
                        "open a new stream to continue the session"
                    ),
                )
            yield message


async def _first_message_landed(requests: AsyncIterator[Any]) -> None:
    """Before refusing a request stream, let its first message land (never decoded): aborting while
    it is in flight makes gRPC end the call, now and then, with INTERNAL "Internal error from Core"
    on the client instead of the status sent (about 1 call in 600 under load)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(anext(aiter(requests), None), FIRST_MESSAGE_WAIT_S)


def _no_decoding(raw: Any) -> Any:
    return raw


class _Body:
    """A method's request decoding, done by the gateway after admission rather than by gRPC before it.

    An undecodable body is the client's fault: INVALID_ARGUMENT, with a message that names the
    message type and nothing of the parser (its exceptions name Python classes).
    """

    __slots__ = ("bad_body", "bad_message", "deserialize")

    def __init__(self, deserializer: Callable[[bytes], Any] | None) -> None:
        self.deserialize: Callable[[Any], Any] = deserializer or _no_decoding
        descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
        name = getattr(descriptor, "full_name", "") or "message"
        self.bad_body = f"the request body is not a valid {name}"
        self.bad_message = f"a message on the request stream is not a valid {name}"

    async def refuse(self, raw: Any, context: grpc.aio.ServicerContext) -> NoReturn:
        log.debug("undecodable request body (%d bytes)", len(raw) if isinstance(raw, bytes) else -1)
        await abort_with(context, InvalidArgument(self.bad_body))
        raise AssertionError("unreachable: abort raises")


class _DecodedRequests:
    """A request stream, each message decoded as the handler reads it; a bad one ends the stream.

    The handler sees InvalidArgument from its read (and again from any later read); if it
    goes on regardless, the gateway ends the call with INVALID_ARGUMENT when the handler returns.
    """

    __slots__ = ("_raw", "bad_message", "deserialize", "failed")

    def __init__(self, raw: Any, body: _Body) -> None:
        self._raw: AsyncIterator[Any] = raw  # not aiter(raw): gRPC's reader warns if made and never read
        self.deserialize = body.deserialize
        self.bad_message = body.bad_message
        self.failed = False

    def __aiter__(self) -> _DecodedRequests:
        return self

    async def __anext__(self) -> Any:
        if self.failed:
            raise InvalidArgument(self.bad_message)
        raw = await anext(self._raw)
        try:
            return self.deserialize(raw)
        except Exception:  # as in stream()
            self.failed = True
        raise InvalidArgument(self.bad_message)


async def _refuse_bad_stream(context: grpc.aio.ServicerContext, requests: _DecodedRequests | None) -> None:
    """A handler that read a bad message but did not end the call with its status: end it here."""
    if requests is not None and requests.failed:
        await abort_with(context, InvalidArgument(requests.bad_message))
