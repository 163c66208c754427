"""keysvc.v1.KeyService over gRPC: unpacks requests, calls the use cases, packs responses."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from keysvc_client.v1 import keysvc_pb2 as pb
from keysvc_client.v1 import keysvc_pb2_grpc as pb_grpc

from keysvc.access.callers import Caller
from keysvc.access.gate import Gate, acting_for
from keysvc.api import convert
from keysvc.api.session import SessionStream
from keysvc.api.status import status_code
from keysvc.core import scopes
from keysvc.core.errors import KeysvcError, Unavailable
from keysvc.core.model import Actor, ApiKey
from keysvc.ports.metrics import NO_METRICS, Metrics
from keysvc.usecases.admin import KeyAdmin
from keysvc.usecases.authorize import Authorizer
from keysvc.usecases.change_log import ChangeLog

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")
Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Request, "Call"], Awaitable[Response]]
Method = Callable[[Any, Request, Context], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Call:
    """Who made this RPC and from where, as the audit trail records it."""

    caller: Caller
    context: Context

    @property
    def actor(self) -> Actor:
        # The peer and the metadata are read only here: Authorize, on the hot path, never
        # needs them.
        name = acting_for(self.caller, self.context.invocation_metadata())
        return Actor(name, self.context.peer())


def _rpc(handler: Handler[Request, Response]) -> Method[Request, Response]:
    """Admits the caller (see Gate), runs the handler, and turns keysvc errors into their
    status codes and anything else into a bare INTERNAL."""

    @functools.wraps(handler)
    async def wrapper(self: KeyServiceServicer, request: Request, context: Context) -> Response:
        try:
            caller = self._gate.admit(
                handler.__name__, context.invocation_metadata, context.auth_context
            )
            return await handler(self, request, Call(caller, context))
        except KeysvcError as err:
            await context.abort(status_code(err), str(err))
        except Exception:
            # The traceback goes to the log; the caller learns nothing about internals.
            log.exception("%s failed", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


class KeyServiceServicer(pb_grpc.KeyServiceServicer):
    def __init__(
        self,
        service: KeyAdmin,
        authorizer: Authorizer,
        gate: Gate,
        change_log: ChangeLog,
        *,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self._service = service
        self._authorizer = authorizer
        self._gate = gate
        self._change_log = change_log
        self._metrics = metrics
        self._sessions: set[SessionStream] = set()

    @_rpc
    async def CreateKey(self, request: pb.CreateKeyRequest, call: Call) -> pb.CreateKeyResponse:
        mode = convert.mode_from_pb(request.mode, "mode", required=True)
        assert mode is not None
        created = await self._service.create_key(
            request.account_id,
            request.name,
            mode,
            request.scopes,
            call.actor,
            expire_time=convert.time_from_pb(request, "expire_time"),
            allowed_ips=request.allowed_ips,
        )
        return pb.CreateKeyResponse(key=self._key(created.key), secret=created.raw_key)

    def _key(self, key: ApiKey) -> pb.Key:
        return convert.key_to_pb(key, self._service.now())

    @_rpc
    async def GetKey(self, request: pb.GetKeyRequest, call: Call) -> pb.Key:
        return self._key(await self._service.get_key(request.account_id, request.id))

    @_rpc
    async def ListKeys(self, request: pb.ListKeysRequest, call: Call) -> pb.ListKeysResponse:
        page = await self._service.list_keys(
            request.account_id,
            page_size=request.page_size,
            page_token=request.page_token,
            mode=convert.mode_from_pb(request.mode, "mode", required=False),
            status=convert.status_from_pb(request.status),
        )
        return pb.ListKeysResponse(
            keys=[self._key(key) for key in page.keys],
            next_page_token=page.next_page_token,
        )

    @_rpc
    async def RevokeKey(self, request: pb.RevokeKeyRequest, call: Call) -> pb.Key:
        revoked = await self._service.revoke_key(
            request.account_id, request.id, call.actor, reason=request.reason
        )
        return self._key(revoked)

    @_rpc
    async def RollKey(self, request: pb.RollKeyRequest, call: Call) -> pb.RollKeyResponse:
        rolled = await self._service.roll_key(
            request.account_id, request.id, convert.grace_from_pb(request), call.actor
        )
        return pb.RollKeyResponse(
            key=self._key(rolled.key), secret=rolled.raw_key, rolled=self._key(rolled.rolled)
        )

    @_rpc
    async def UpdateKey(self, request: pb.UpdateKeyRequest, call: Call) -> pb.Key:
        mask = request.update_mask if request.HasField("update_mask") else None
        updated = await self._service.update_key(
            request.key.account_id,
            request.key.id,
            convert.update_from_pb(request.key, mask),
            call.actor,
        )
        return self._key(updated)

    @_rpc
    async def RevokeLeakedKeys(
        self, request: pb.RevokeLeakedKeysRequest, call: Call
    ) -> pb.RevokeLeakedKeysResponse:
        results = await self._service.revoke_leaked_keys(request.keys, request.source, call.actor)
        return pb.RevokeLeakedKeysResponse(
            results=[convert.leaked_key_to_pb(leaked) for leaked in results]
        )

    @_rpc
    async def Authorize(self, request: pb.AuthorizeRequest, call: Call) -> pb.AuthorizeResponse:
        started = time.perf_counter()
        try:
            decision = await self._authorizer.authorize(
                request.api_key,
                request.required_scopes,
                convert.mode_from_pb(request.required_mode, "required_mode", required=False),
                request.client_ip,
            )
        except Unavailable:
            self._metrics.decision("unavailable", time.perf_counter() - started, transport="unary")
            raise
        self._metrics.decision(
            decision.reason.name, time.perf_counter() - started, transport="unary"
        )
        return convert.decision_to_pb(decision)

    async def Session(
        self, request_iterator: AsyncIterable[pb.SessionRequests], context: Context
    ) -> AsyncIterator[pb.SessionResponses]:
        try:
            self._gate.admit("Session", context.invocation_metadata, context.auth_context)
        except KeysvcError as err:
            await context.abort(status_code(err), str(err))
        stream = SessionStream(self._authorizer, self._change_log, metrics=self._metrics)
        self._sessions.add(stream)
        try:
            async for responses in stream.responses(request_iterator):
                yield responses
        finally:
            self._sessions.discard(stream)

    def end_sessions(self) -> None:
        """Ends every open Session stream: a graceful shutdown need not wait for Guards, which
        never end theirs."""
        for stream in list(self._sessions):
            stream.end()

    @_rpc
    async def ListScopes(self, request: pb.ListScopesRequest, call: Call) -> pb.ListScopesResponse:
        return pb.ListScopesResponse(
            scopes=[pb.Scope(name=n, description=d) for n, d in scopes.CATALOGUE.items()]
        )

    @_rpc
    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, call: Call
    ) -> pb.ListAuditEventsResponse:
        page = await self._service.list_audit_events(
            request.account_id, page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListAuditEventsResponse(
            events=[convert.audit_event_to_pb(event) for event in page.events],
            next_page_token=page.next_page_token,
        )
