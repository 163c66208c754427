"""Who may call what: admin RPCs need an admin token sent as `authorization: Bearer <token>`.

Tokens are held only as SHA-256 digests and compared in constant time. Every
KeyService RPC is an admin RPC unless listed in OPEN_METHODS, so a new RPC is
protected by default. Health and reflection stay open for probes and grpcurl.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from keysvc_client.v1 import keysvc_pb2 as pb

_SERVICE = pb.DESCRIPTOR.services_by_name["KeyService"]
KEY_SERVICE_METHODS = frozenset(f"/{_SERVICE.full_name}/{m.name}" for m in _SERVICE.methods)
OPEN_METHODS = frozenset({f"/{_SERVICE.full_name}/Authorize"})
ADMIN_METHODS = KEY_SERVICE_METHODS - OPEN_METHODS


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for name, value in metadata or ():
        if name == "authorization" and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class AdminTokens:
    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = [_digest(t) for t in tokens]

    def accepts(self, token: str | None) -> bool:
        if token is None:
            return False
        presented = _digest(token)
        # Compare against every digest, so timing does not tell which one matched.
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(presented, known)
        return matched


async def _unauthenticated(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(
        grpc.StatusCode.UNAUTHENTICATED,
        "admin credential required: send 'authorization: Bearer <admin token>' metadata",
    )


class AdminCredentialInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: AdminTokens) -> None:
        self._tokens = tokens
        self._deny: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(
            _unauthenticated
        )

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        if details.method in ADMIN_METHODS and not self._tokens.accepts(
            bearer_token(details.invocation_metadata)
        ):
            return self._deny
        return await continuation(details)
