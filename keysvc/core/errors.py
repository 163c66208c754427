"""The errors keysvc's use cases raise; keysvc.api.status maps each to a gRPC status code.

    KeysvcError
    ├── InvalidArgument    the request is malformed: the message says what is wrong
    ├── NotFound           no such key in this account (also: it is another account's)
    ├── FailedPrecondition the key's state forbids the call (rolling a revoked key, say)
    ├── Unauthenticated    no valid admin credential
    ├── PermissionDenied   a valid credential that may not call this RPC
    └── Unavailable        a backend (database, cache) cannot answer now; retry later

Messages are shown to callers: they never contain a raw key, a token or a password.
"""

from __future__ import annotations


class KeysvcError(Exception):
    """Base of every error keysvc reports to its callers."""


class InvalidArgument(KeysvcError):
    """The request is malformed; the message says which field and why."""


class NotFound(KeysvcError):
    """No such key in this account."""


class FailedPrecondition(KeysvcError):
    """The key exists but its state forbids the change: revoked or expired keys are final."""


class Unauthenticated(KeysvcError):
    """The call carries no valid credential."""


class PermissionDenied(KeysvcError):
    """The credential is valid but may not make this call."""


class Unavailable(KeysvcError):
    """A backend cannot answer now, so the call did not complete; retrying is safe.

    Nothing is half-written. A RevokeKey may already be in the database while a cache
    copy still says active: it answers this error rather than OK, until a retry lands.
    """


class StartupError(Exception):
    """keysvc cannot start with these settings; the message says why. Not an RPC error."""
