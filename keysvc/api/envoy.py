"""Envoy's external authorization, v3 gRPC: `envoy.service.auth.v3.Authorization/Check`.

Envoy's ext_authz HTTP filter asks Check about each request before routing it. The request's
method, path, Authorization header and source address go to the gateway decision
(keysvc.api.gateway), and its answer comes back as Envoy needs it:

- allowed: OK, with `ok_response` setting the identity headers for the upstream
  (x-keysvc-key-id, -account-id, -mode, -scopes; overwriting any the client sent), removing
  every other x-keysvc-* header the client sent and, unless `strip_key` is off, the
  Authorization header: the upstream never sees the key;
- refused (401, 403, or 404 for a route no line declares): `denied_response` with that
  status, the Guard's WWW-Authenticate challenge and its JSON body;
- keysvc cannot decide: the RPC fails with UNAVAILABLE, never OK, which Envoy's filter
  (`failure_mode_allow: false`, `status_on_error: {code: ServiceUnavailable}`) answers with 503.

Envoy is an Authorize-class caller: the Gate admits Check as it admits Authorize (an
authorizer's token in `initial_metadata`, or a client certificate keysvc knows; nothing on the
loopback default without callers).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, cast

import grpc
from google.rpc import status_pb2
from keysvc_client._guard_common import authorization_value

from keysvc.access.gate import Gate
from keysvc.api.envoy_stubs.envoy.config.core.v3 import base_pb2
from keysvc.api.envoy_stubs.envoy.service.auth.v3 import (
    attribute_context_pb2,
    external_auth_pb2,
    external_auth_pb2_grpc,
)
from keysvc.api.envoy_stubs.envoy.type.v3 import http_status_pb2
from keysvc.api.gateway import IDENTITY_HEADERS, IDENTITY_PREFIX, Gateway, GatewayAnswer
from keysvc.api.status import status_code
from keysvc.core.errors import KeysvcError

__all__ = ["SERVICE_NAME", "EnvoyAuthorization", "add_to_server"]

log = logging.getLogger(__name__)

SERVICE_NAME = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name

# The Gate knows KeyService's RPCs: Check asks what Authorize asks, and is admitted as it is.
_ADMITTED_AS = "Authorize"

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

# google.rpc.Code: Envoy lets a request through on OK only; the code of a refusal is for logs.
_OK = 0
_RPC_CODES = {401: 16, 403: 7, 404: 5}  # UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND

Context = grpc.aio.ServicerContext[Any, Any]


class EnvoyAuthorization(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, gateway: Gateway, gate: Gate, *, strip_key: bool = True) -> None:
        self._gateway = gateway
        self._gate = gate
        self._strip_key = strip_key

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: Context
    ) -> external_auth_pb2.CheckResponse:
        try:
            self._gate.admit(_ADMITTED_AS, context.invocation_metadata, context.auth_context)
        except KeysvcError as err:
            # Envoy turns any error into its status_on_error (503): say why where it is seen.
            log.error("Envoy's Check refused (%s): give Envoy an authorizer's credential", err)
            await context.abort(status_code(err), str(err))
        http = request.attributes.request.http
        headers = _headers(http)
        answer = await self._gateway.decide(
            http.method,
            http.path,
            authorization_value(headers.get("authorization", [])),
            _source_address(request.attributes.source),
        )
        if answer.unavailable:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "keysvc cannot decide right now")
        if answer.allowed:
            return self._allowed(answer, headers)
        return _denied(answer)

    def _allowed(
        self, answer: GatewayAnswer, headers: dict[str, list[str]]
    ) -> external_auth_pb2.CheckResponse:
        response = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=_OK))
        ok = response.ok_response
        for name, value in answer.upstream_headers.items():
            ok.headers.add(
                header=base_pb2.HeaderValue(key=name, value=value), append_action=_OVERWRITE
            )
        # The client's own x-keysvc-* headers: the four above are overwritten, any other goes.
        ok.headers_to_remove.extend(
            sorted(
                name
                for name in headers
                if name.startswith(IDENTITY_PREFIX) and name not in IDENTITY_HEADERS
            )
        )
        if self._strip_key and "authorization" in headers:
            ok.headers_to_remove.append("authorization")
        return response


def _denied(answer: GatewayAnswer) -> external_auth_pb2.CheckResponse:
    response = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=_RPC_CODES.get(answer.status, 7), message=answer.reason)
    )
    denied = response.denied_response
    # envoy.type.v3.StatusCode's values are the HTTP statuses themselves.
    denied.status.code = cast(http_status_pb2.StatusCode.ValueType, answer.status)
    for name, value in answer.headers.items():
        denied.headers.add(
            header=base_pb2.HeaderValue(key=name.lower(), value=value), append_action=_OVERWRITE
        )
    denied.body = answer.body.decode()
    return response


def _headers(http: attribute_context_pb2.AttributeContext.HttpRequest) -> dict[str, list[str]]:
    """The request's headers by lower-case name: from `headers` (Envoy joins repeated ones with
    a comma), or from `header_map` under the filter's `encode_raw_headers`."""
    found: dict[str, list[str]] = {}
    pairs: Iterable[tuple[str, str]]
    if http.header_map.headers:
        pairs = (
            (header.key, header.raw_value.decode("utf-8", "replace") or header.value)
            for header in http.header_map.headers
        )
    else:
        pairs = http.headers.items()
    for name, value in pairs:
        found.setdefault(name.lower(), []).append(value)
    return found


def _source_address(peer: attribute_context_pb2.AttributeContext.Peer) -> str | None:
    """The downstream client's address as Envoy saw it (its remote address, which Envoy's
    use_remote_address / xff_num_trusted_hops settle); None when it is not an IP socket."""
    if not peer.address.HasField("socket_address"):
        return None
    return peer.address.socket_address.address or None


def add_to_server(servicer: EnvoyAuthorization, server: grpc.aio.Server) -> None:
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer, server)
