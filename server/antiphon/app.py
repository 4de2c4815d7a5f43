"""Composition root: builds every component from the settings; owns startup and shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import TracerProvider

from antiphon.agent.profiles import ProfileRegistry
from antiphon.agent.turn import TurnRunner
from antiphon.api.admin import AdminServicer
from antiphon.api.context import ContextServicer, PrincipalOf
from antiphon.api.conversation import ConversationServicer
from antiphon.api.stream_session import Services
from antiphon.api.streams import StreamRegistry
from antiphon.api.tools import ToolsServicer
from antiphon.config import Settings
from antiphon.context.builder import ContextLimits
from antiphon.context.documents import DocumentService
from antiphon.context.factory import open_documents
from antiphon.context.sessions import MemorySessionStore, SessionStore
from antiphon.errors import Unavailable
from antiphon.gateway.interceptor import build_gateway
from antiphon.inference.llm import LLM
from antiphon.preflight import (
    REDIS_PING_TIMEOUT_S,
    StartupError,
    check_port_free,
    redis_startup_error,
    start_metrics,
)
from antiphon.telemetry.metrics import Metrics
from antiphon.telemetry.tracing import setup_tracing
from antiphon.tools.factory import build_tools
from antiphon.tools.registry import ToolRegistry, ToolsDirError
from antiphon.tools.sandbox import Sandbox
from antiphon.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    context_pb2,
    context_pb2_grpc,
    conversation_pb2,
    conversation_pb2_grpc,
    tools_pb2,
    tools_pb2_grpc,
)
from antiphon.voice.engines import VoiceEngines, open_voice

log = logging.getLogger(__name__)

CLOSE_AFTER_FAILED_START_S = 10.0

SERVICE_NAMES = (
    conversation_pb2.DESCRIPTOR.services_by_name["Conversation"].full_name,
    context_pb2.DESCRIPTOR.services_by_name["Context"].full_name,
    tools_pb2.DESCRIPTOR.services_by_name["Tools"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
)


async def open_llm(settings: Settings) -> LLM:
    """The configured LLM backend, started: embedded (a worker process) or Triton."""
    from antiphon.inference.onnx_llm import OnnxGenaiLLM

    m = settings.models
    if m.backend == "triton":
        from antiphon.inference.triton_llm import TritonLLM

        try:
            return await TritonLLM.open(
                m.triton_url, m.path, context_tokens=settings.generation.context_tokens, timeout_s=m.triton_timeout_s
            )
        except Unavailable as exc:
            if not m.triton_fallback:
                raise
            log.error("Triton unreachable at start; serving on the embedded LLM: %s", exc.message)
    return await OnnxGenaiLLM.open(
        m.path, threads=m.llm_threads, context_tokens=settings.generation.context_tokens, slice_ms=m.llm_slice_ms
    )


def build_session_store(settings: Settings) -> SessionStore:
    c = settings.context
    if c.sessions == "redis":
        from antiphon.context.redis_sessions import RedisSessionStore

        return RedisSessionStore(c, prefix=c.redis_prefix, ttl_s=c.session_ttl_s)
    return MemorySessionStore(ttl_s=c.session_ttl_s)


class App:
    def __init__(
        self,
        settings: Settings,
        *,
        llm: LLM | None = None,
        sessions: SessionStore | None = None,
        documents: DocumentService | None = None,
        principal_of: PrincipalOf | None = None,
        tracer_provider: TracerProvider | None = None,
        voice: VoiceEngines | None = None,
    ) -> None:
        self.settings = settings
        self._voice = voice  # voice models; loaded at start() unless voice.enabled is off
        self._voice_injected = voice is not None
        self.metrics = Metrics.create()
        # Gateway: authentication, RBAC, rate limits, budgets and usage metering (a server interceptor).
        self.gateway = build_gateway(settings, self.metrics.registry)
        self._llm = llm
        self.sessions = sessions or build_session_store(settings)
        self._documents = documents
        self._documents_injected = documents is not None
        # Who is calling: the principal the gateway authenticated (the embedded one when auth.mode = "none").
        self.principal_of: PrincipalOf = principal_of or self.gateway.principal_of
        self._tracer_provider = tracer_provider
        self._server: grpc.aio.Server | None = None
        self._sandbox: Sandbox | None = None
        self.tools: ToolRegistry | None = None
        self._health = health.aio.HealthServicer()
        self._metrics_server: Any = None
        self.streams = StreamRegistry(settings.server.max_streams, self.metrics)
        self.port = 0
        self._stopped = asyncio.Event()

    @property
    def llm(self) -> LLM:
        if self._llm is None:
            raise RuntimeError("App.start() has not loaded the model yet")
        return self._llm

    async def start(self) -> int:
        """Check what is cheap first (ports, tools, Redis), load the models, serve; returns the bound port.

        A server that cannot start raises StartupError (or ModelMissing) within seconds, before the
        models load where it can, and closes whatever it had started: the process can then exit.
        """
        try:
            return await self._start()
        except BaseException:
            await self._close_started()
            raise

    async def _start(self) -> int:
        s = self.settings
        check_port_free("server.port", s.server.host, s.server.port)
        if s.telemetry.metrics_port:
            self._metrics_server = start_metrics(self.metrics, s.telemetry.metrics_host, s.telemetry.metrics_port)
        self._sandbox, self.tools = build_tools(s)
        try:
            await self.tools.start()
        except ToolsDirError as exc:
            raise StartupError(
                f"tools.dir: {exc.message} (set tools.dir, or leave it empty for no built-in tools)"
            ) from None
        await self._check_sessions()
        if self._tracer_provider is None:
            self._tracer_provider = setup_tracing(s.telemetry)
        if self._llm is None:
            t0 = time.perf_counter()
            self._llm = await open_llm(s)
            log.info(
                "model loaded",
                extra={"model": self._llm.description.name, "load_s": round(time.perf_counter() - t0, 2)},
            )
        if self._documents is None:
            self._documents = await open_documents(s)
        if self._documents is not None:
            await self._documents.start()
        if self._voice is None and s.voice.enabled != "off":
            t0 = time.perf_counter()
            self._voice = await asyncio.get_running_loop().run_in_executor(None, open_voice, s.voice)
            if self._voice is not None:
                log.info("voice ready", extra={"load_s": round(time.perf_counter() - t0, 2)})
        profiles = ProfileRegistry(s)
        runner = TurnRunner(
            self._llm,
            self.sessions,
            self.metrics,
            limits=ContextLimits(context_tokens=s.generation.context_tokens),
            retriever=self._documents,
            tools=self.tools,
            profiles=profiles,
            usage=self.gateway.metering,
        )
        services = Services(
            s,
            profiles,
            self.sessions,
            runner,
            self.principal_of,
            voice=self._voice,
            meter=self.gateway.metering,
            metrics=self.metrics,
        )

        await self.gateway.start()
        server = grpc.aio.server(
            interceptors=[self.gateway.interceptor],
            options=[
                ("grpc.max_receive_message_length", s.server.max_message_bytes),
                ("grpc.max_send_message_length", s.server.max_message_bytes),
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.http2.max_pings_without_data", 0),
            ],
        )
        conversation_pb2_grpc.add_ConversationServicer_to_server(
            ConversationServicer(services, self.streams, self.metrics), server
        )
        context_pb2_grpc.add_ContextServicer_to_server(
            ContextServicer(self.sessions, self._documents, self.principal_of, self.metrics), server
        )
        tools_pb2_grpc.add_ToolsServicer_to_server(ToolsServicer(self.tools, self.principal_of, self.metrics), server)
        admin_pb2_grpc.add_AdminServicer_to_server(
            AdminServicer(self._llm, self.gateway, self.principal_of, self.metrics), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        address = f"{s.server.host}:{s.server.port}"
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError:  # grpc raises where older releases returned 0
            self.port = 0
        if self.port == 0:  # taken since the check above
            raise StartupError(f"server.port: cannot listen on {address}: the address is in use (set server.port)")
        self._server = server
        await server.start()
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"address": f"{s.server.host}:{self.port}"})
        return self.port

    async def _check_sessions(self) -> None:
        """Redis sessions must answer at start: a worker without its store would fail every turn."""
        c = self.settings.context
        try:
            await asyncio.wait_for(self.sessions.ping(), REDIS_PING_TIMEOUT_S)
        except (Unavailable, TimeoutError) as exc:
            why = exc.message if isinstance(exc, Unavailable) else f"no answer in {REDIS_PING_TIMEOUT_S:g} s"
            if c.sessions != "redis":
                raise
            raise await redis_startup_error(c, why) from None

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, drain streams up to the grace period, then cancel the rest."""
        if self._server is None:
            return
        grace = self.settings.server.shutdown_grace_s if grace_s is None else grace_s
        log.info("shutting down", extra={"open_streams": self.streams.open_streams, "grace_s": grace})
        await self._health.enter_graceful_shutdown()
        self.streams.start_drain()
        drained = await self.streams.wait_idle(grace)
        if not drained:
            log.warning("grace period over; cancelling open streams", extra={"open_streams": self.streams.open_streams})
        await self._server.stop(0.5 if drained else 0)
        if not drained:  # the cancelled handlers close their sessions (turns, speech): let them finish
            await self.streams.wait_idle(2.0)
        self._server = None
        await self._close_components()
        self._stopped.set()
        log.info("stopped")

    async def _close_started(self) -> None:
        """After a failed start: close what had started, within a bound (a hung close must not keep
        the process alive)."""
        server, self._server = self._server, None
        try:
            if server is not None:
                await server.stop(0)
            await asyncio.wait_for(self._close_components(), CLOSE_AFTER_FAILED_START_S)
        except Exception:  # the start failure is what the caller must see
            log.exception("closing after a failed start")

    async def _close_components(self) -> None:
        metrics_server, self._metrics_server = self._metrics_server, None
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        if self._llm is not None:
            await self._llm.aclose()
        if self._voice is not None and not self._voice_injected:
            self._voice.close()
        await self.sessions.aclose()
        await self.gateway.aclose()
        if self._documents is not None:
            await self._documents.aclose()
        if self._sandbox is not None:
            await self._sandbox.aclose()
        if self._tracer_provider is not None:
            self._tracer_provider.shutdown()

    async def serve_until_signalled(self) -> None:
        """After start(): serve until SIGTERM or SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        await stop_requested.wait()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await self.stop()
