"""KeyService over gRPC: unpacks requests, calls the use cases, packs responses."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from keysvc_client.v1 import keysvc_pb2 as pb
from keysvc_client.v1 import keysvc_pb2_grpc as pb_grpc

from keysvc import scopes
from keysvc.api import convert
from keysvc.api.status import status_code
from keysvc.authorizer import Authorizer
from keysvc.errors import KeysvcError
from keysvc.service import KeyService

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")
Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Request, Context], Awaitable[Response]]


def _reports_errors(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    """Turns keysvc errors into their status codes, and anything else into a bare INTERNAL."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Request, context: Context) -> Response:
        try:
            return await handler(self, request, context)
        except KeysvcError as err:
            await context.abort(status_code(err), str(err))
        except Exception:
            # The traceback goes to the log; the caller learns nothing about internals.
            log.exception("%s failed", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


class KeyServiceServicer(pb_grpc.KeyServiceServicer):
    def __init__(self, service: KeyService, authorizer: Authorizer) -> None:
        self._service = service
        self._authorizer = authorizer

    @_reports_errors
    async def CreateKey(
        self, request: pb.CreateKeyRequest, context: Context
    ) -> pb.CreateKeyResponse:
        mode = convert.mode_from_pb(request.mode, "mode", required=True)
        assert mode is not None
        created = await self._service.create_key(
            request.account_id, request.name, mode, request.scopes
        )
        return pb.CreateKeyResponse(key=convert.key_to_pb(created.key), secret=created.secret)

    @_reports_errors
    async def GetKey(self, request: pb.GetKeyRequest, context: Context) -> pb.Key:
        return convert.key_to_pb(await self._service.get_key(request.account_id, request.id))

    @_reports_errors
    async def ListKeys(self, request: pb.ListKeysRequest, context: Context) -> pb.ListKeysResponse:
        page = await self._service.list_keys(
            request.account_id,
            page_size=request.page_size,
            page_token=request.page_token,
            mode=convert.mode_from_pb(request.mode, "mode", required=False),
            status=convert.status_from_pb(request.status),
        )
        return pb.ListKeysResponse(
            keys=[convert.key_to_pb(key) for key in page.keys],
            next_page_token=page.next_page_token,
        )

    @_reports_errors
    async def RevokeKey(self, request: pb.RevokeKeyRequest, context: Context) -> pb.Key:
        return convert.key_to_pb(await self._service.revoke_key(request.account_id, request.id))

    @_reports_errors
    async def Authorize(
        self, request: pb.AuthorizeRequest, context: Context
    ) -> pb.AuthorizeResponse:
        decision = await self._authorizer.authorize(
            request.api_key,
            request.required_scopes,
            convert.mode_from_pb(request.required_mode, "required_mode", required=False),
        )
        return convert.decision_to_pb(decision)

    @_reports_errors
    async def ListScopes(
        self, request: pb.ListScopesRequest, context: Context
    ) -> pb.ListScopesResponse:
        return pb.ListScopesResponse(
            scopes=[pb.Scope(name=n, description=d) for n, d in scopes.CATALOGUE.items()]
        )
