"""Typed Python client for keysvc, the API key service of the payments platform.

keysvc_client.KeyServiceClient blocks; keysvc_client.aio.KeyServiceClient is its asyncio twin.
keysvc_client.Guard is what API servers keep to check each request's key (asyncio:
keysvc_client.aio.Guard); keysvc_client.integrations has the glue for web frameworks and gRPC.
All four take a keysvc_client.Connection: where keysvc is, the caller's token, TLS.
"""

from keysvc_client._common import ModeLike, StatusLike
from keysvc_client._connection import Connection, PemSource
from keysvc_client._guard import Guard
from keysvc_client._guard_common import KeyContext, Verdict, VerdictReason
from keysvc_client._sync import KeyServiceClient
from keysvc_client.errors import (
    FailedPrecondition,
    InvalidArgument,
    KeysvcError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)
from keysvc_client.v1 import keysvc_pb2, keysvc_pb2_grpc

Key = keysvc_pb2.Key
CreateKeyResponse = keysvc_pb2.CreateKeyResponse
ListKeysResponse = keysvc_pb2.ListKeysResponse
AuthorizeResponse = keysvc_pb2.AuthorizeResponse
Scope = keysvc_pb2.Scope
RollKeyResponse = keysvc_pb2.RollKeyResponse
RevokeLeakedKeysResponse = keysvc_pb2.RevokeLeakedKeysResponse
LeakedKey = keysvc_pb2.LeakedKey
AuditEvent = keysvc_pb2.AuditEvent

__all__ = [
    "AuditEvent",
    "AuthorizeResponse",
    "Connection",
    "CreateKeyResponse",
    "FailedPrecondition",
    "Guard",
    "InvalidArgument",
    "Key",
    "KeyContext",
    "KeyServiceClient",
    "KeysvcError",
    "LeakedKey",
    "ListKeysResponse",
    "ModeLike",
    "NotFound",
    "PemSource",
    "PermissionDenied",
    "RevokeLeakedKeysResponse",
    "RollKeyResponse",
    "Scope",
    "StatusLike",
    "Unauthenticated",
    "Unavailable",
    "Verdict",
    "VerdictReason",
    "from_rpc_error",
    "keysvc_pb2",
    "keysvc_pb2_grpc",
]
