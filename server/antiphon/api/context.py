"""Context service: long-term memory documents and session history."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from antiphon.aio import unwind
from antiphon.api.boundary import guard_unary
from antiphon.api.session_access import may_delete, not_found, require_use
from antiphon.config import SESSION_ID_RE
from antiphon.context.derived import readable
from antiphon.context.documents import DocumentInput, DocumentService
from antiphon.context.sessions import SessionStore
from antiphon.errors import FailedPrecondition, InvalidArgument, Unavailable
from antiphon.gateway.principal import Principal
from antiphon.telemetry.metrics import Metrics
from antiphon.v1 import context_pb2 as pb
from antiphon.v1 import context_pb2_grpc

T = TypeVar("T")
PrincipalOf = Callable[[grpc.aio.ServicerContext], Principal]


class ContextServicer(context_pb2_grpc.ContextServicer):
    def __init__(
        self, sessions: SessionStore, documents: DocumentService | None, principal_of: PrincipalOf, metrics: Metrics
    ) -> None:
        self._sessions = sessions
        self._documents = documents
        self._principal_of = principal_of
        self._metrics = metrics

    def _guard(self, context: grpc.aio.ServicerContext, name: str, call: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        return guard_unary(call, context, name, self._metrics)

    def _docs(self) -> DocumentService:
        if self._documents is None:
            raise Unavailable("long-term memory is not available: the embedder model is not prepared")
        return self._documents

    async def PutDocuments(  # noqa: N802 (gRPC method name)
        self, request: pb.PutDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.PutDocumentsResponse:
        principal = self._principal_of(context)

        async def call() -> pb.PutDocumentsResponse:
            inputs = [
                DocumentInput(d.id, d.text, frozenset(d.acl_labels), dict(d.metadata), d.source)
                for d in request.documents
            ]
            ids, chunks = await self._docs().put(principal, inputs)
            return pb.PutDocumentsResponse(ids=ids, chunks=chunks)

        return await self._guard(context, "PutDocuments", call)

    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:  # noqa: N802
        principal = self._principal_of(context)

        async def call() -> pb.SearchResponse:
            top_k = request.top_k or 5
            result = await self._docs().search(principal, request.query, top_k, request.min_score or -1.0)
            hits = [
                pb.SearchHit(
                    document=pb.Document(
                        id=h.document.id,
                        text=h.document.text,
                        acl_labels=sorted(h.document.labels),
                        metadata=dict(h.document.metadata),
                        source=h.document.source,
                    ),
                    score=h.score,
                )
                for h in result.hits
            ]
            return pb.SearchResponse(hits=hits)

        return await self._guard(context, "Search", call)

    async def DeleteDocuments(  # noqa: N802
        self, request: pb.DeleteDocumentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteDocumentsResponse:
        principal = self._principal_of(context)

        async def call() -> pb.DeleteDocumentsResponse:
            if not request.ids:
                raise InvalidArgument("ids: at least one id is required")
            return pb.DeleteDocumentsResponse(deleted=await self._docs().delete(principal, list(request.ids)))

        return await self._guard(context, "DeleteDocuments", call)

    async def GetSession(self, request: pb.GetSessionRequest, context: grpc.aio.ServicerContext) -> pb.Session:  # noqa: N802
        principal = self._principal_of(context)

        async def call() -> pb.Session:
            _check_session_id(request.session_id)
            record = await self._sessions.get(principal.tenant, request.session_id)
            record = require_use(principal, record, request.session_id)
            turns = [
                pb.Turn(role=t.role, content=t.content, created_us=t.created_us)
                if readable(principal, t.acl)
                else pb.Turn(role=t.role, created_us=t.created_us, redacted=True)
                for t in record.turns
            ]
            summary_ok = readable(principal, record.summary_acl)
            return pb.Session(
                session_id=record.session_id,
                agent_profile=record.agent_profile,
                turns=turns,
                summary=record.summary if summary_ok else "",
                summary_redacted=bool(record.summary) and not summary_ok,
            )

        return await self._guard(context, "GetSession", call)

    async def DeleteSession(  # noqa: N802
        self, request: pb.DeleteSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteSessionResponse:
        principal = self._principal_of(context)

        async def call() -> pb.DeleteSessionResponse:
            _check_session_id(request.session_id)
            record = await self._sessions.get(principal.tenant, request.session_id)
            if record is None or not may_delete(principal, record):
                raise not_found(request.session_id)
            owner = f"delete-{uuid.uuid4().hex}"
            if not await self._sessions.acquire(principal.tenant, request.session_id, owner):
                raise FailedPrecondition(
                    f"session_id: session {request.session_id!r} is open on a stream; end that stream first"
                )
            try:
                deleted = await self._sessions.delete(principal.tenant, request.session_id)
            finally:  # a caller that gives up must not leave the session locked for the lease's TTL
                await unwind(self._sessions.release(principal.tenant, request.session_id, owner), name="release")
            if not deleted:
                raise not_found(request.session_id)
            return pb.DeleteSessionResponse()

        return await self._guard(context, "DeleteSession", call)


def _check_session_id(session_id: str) -> None:
    if not SESSION_ID_RE.fullmatch(session_id):
        raise InvalidArgument("session_id: use 1..128 characters from [A-Za-z0-9._:-]")
