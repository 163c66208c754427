"""Who is calling, and may they: every KeyService RPC passes the Gate before it runs.

Admins may call every RPC; authorizers only Authorize (and Session, its stream). A
missing or unknown credential is UNAUTHENTICATED; a known caller calling an RPC beyond its role is
PERMISSION_DENIED. Every RPC is admin-only unless listed in AUTHORIZER_RPCS, so a
new RPC is protected by default. Authorize is left open (`open_authorize`) only on
a loopback listener with no authorizers configured: the zero-config embedded
default. Health and reflection are other services and stay open.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from keysvc.access.callers import Caller, Callers, Role
from keysvc.core import keys
from keysvc.core.errors import InvalidArgument, PermissionDenied, Unauthenticated

AUTHORIZER_RPCS = frozenset({"Authorize", "Session"})

# Metadata an admin tool (the dashboard) sends to say on whose behalf it calls: the audit
# trail then names both, "alice via dashboard".
ON_BEHALF_OF = "x-keysvc-on-behalf-of"
_ON_BEHALF_OF_MAX = 100

# Stands for the caller of an open Authorize, which needs no credential.
ANONYMOUS = Caller("anonymous", Role.AUTHORIZER)


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for name, value in metadata or ():
        if name == "authorization" and isinstance(value, str):
            token = keys.bearer_credential(value)
            if token:
                return token
    return None


def acting_for(caller: Caller, metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The actor the audit trail records for `caller`: its name, or "<user> via <name>" when
    an admin caller says on whose behalf it acts. Only admins may say so."""
    values = [value for name, value in metadata or () if name == ON_BEHALF_OF]
    if not values:
        return caller.name
    if caller.role is not Role.ADMIN:
        raise PermissionDenied(f"{ON_BEHALF_OF}: only an admin caller may act for someone")
    (user,) = values if len(values) == 1 else (None,)
    if not isinstance(user, str) or not user.strip():
        raise InvalidArgument(f"{ON_BEHALF_OF}: one non-empty user name")
    user = user.strip()
    if len(user) > _ON_BEHALF_OF_MAX or any(not c.isprintable() for c in user):
        raise InvalidArgument(f"{ON_BEHALF_OF}: at most {_ON_BEHALF_OF_MAX} printable characters")
    return f"{user} via {caller.name}"


def certificate_identities(auth_context: Mapping[str, Iterable[bytes]]) -> list[str]:
    """The names a verified client certificate carries: its common name and its SANs."""
    names = [
        *auth_context.get("x509_common_name", ()),
        *auth_context.get("x509_subject_alternative_name", ()),
    ]
    return [name.decode("utf-8", "replace") for name in names]


class Gate:
    def __init__(self, callers: Callers, *, open_authorize: bool) -> None:
        self._callers = callers
        self._open_authorize = open_authorize

    def admit(
        self,
        rpc: str,
        metadata: Callable[[], Iterable[tuple[str, Any]] | None],
        auth_context: Callable[[], Mapping[str, Iterable[bytes]]],
    ) -> Caller:
        """The caller making `rpc`; raises Unauthenticated or PermissionDenied if it may not.

        The credentials are fetched only when needed: an open Authorize, on the hot
        path, reads neither.
        """
        if rpc in AUTHORIZER_RPCS and self._open_authorize:
            return ANONYMOUS
        token = bearer_token(metadata())
        if token is not None:
            # A token that is sent must be right: a wrong one is never excused by a certificate.
            caller = self._callers.by_token(token)
        else:
            caller = self._callers.by_client_identity(certificate_identities(auth_context()))
        if caller is None:
            raise Unauthenticated(
                "credential required: send 'authorization: Bearer <token>' metadata"
                " or a client certificate keysvc knows"
            )
        if rpc not in AUTHORIZER_RPCS and caller.role is not Role.ADMIN:
            raise PermissionDenied(
                f"caller {caller.name!r} is an {caller.role.value}:"
                " it may call Authorize and Session only"
            )
        return caller
