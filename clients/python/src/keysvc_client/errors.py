"""The exceptions the keysvc client raises in place of grpc.RpcError.

One class per status a caller handles differently; the tree is shallow on purpose:

    KeysvcError              any failed call: .code (grpc.StatusCode), .details (str)
    +-- InvalidArgument      INVALID_ARGUMENT
    +-- NotFound             NOT_FOUND
    +-- Unauthenticated      UNAUTHENTICATED
    +-- PermissionDenied     PERMISSION_DENIED
    +-- FailedPrecondition   FAILED_PRECONDITION: the key's state forbids it (e.g. rolling a
    |                        revoked key)
    +-- Unavailable          UNAVAILABLE or DEADLINE_EXCEEDED: keysvc could not decide

Any other status is a plain KeysvcError.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

__all__ = [
    "FailedPrecondition",
    "InvalidArgument",
    "KeysvcError",
    "NotFound",
    "PermissionDenied",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
]


class KeysvcError(Exception):
    """A keysvc call failed; `code` is the gRPC status, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details

    def __str__(self) -> str:
        return self.details

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.details!r})"


class InvalidArgument(KeysvcError):
    """The request was malformed, e.g. an unknown scope or an empty account_id."""


class NotFound(KeysvcError):
    """No such key in this account."""


class Unauthenticated(KeysvcError):
    """The admin token was missing or wrong."""


class PermissionDenied(KeysvcError):
    """The admin token is valid but not allowed to do this."""


class FailedPrecondition(KeysvcError):
    """The key is not in a state that allows this, e.g. rolling or updating a revoked or
    expired key. Retrying will not help."""


class Unavailable(KeysvcError):
    """keysvc could not decide: unreachable, overloaded, or out of time.

    Treat an authorization check that ends here as neither allowed nor refused:
    fail closed, and retrying later may succeed.
    """


_BY_CODE: dict[grpc.StatusCode, type[KeysvcError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}


def from_rpc_error(err: grpc.RpcError) -> KeysvcError:
    """The KeysvcError for a failed call; the caller raises it `from err`."""
    # grpc.RpcError itself declares neither code() nor details(): the errors grpc
    # raises also implement grpc.Call, but one raised by an interceptor need not.
    code = _call(err, "code")
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details = _call(err, "details")
    if not isinstance(details, str):
        details = ""
    return _BY_CODE.get(code, KeysvcError)(code, details)


def _call(obj: object, name: str) -> Any:
    method: Callable[[], Any] | None = getattr(obj, name, None)
    return method() if callable(method) else None
