"""Connection: where keysvc is and how to reach it, one value for both clients and both Guards.

The constructors also take the same settings as keywords; both forms end here as a Connection.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypedDict

import grpc

__all__ = ["ChannelKeywords", "Connection", "PemSource", "connection_of"]

PemSource: TypeAlias = "str | os.PathLike[str] | bytes"
"""A PEM file's path (str or Path), or the PEM itself as bytes."""


@dataclass(frozen=True, slots=True)
class Connection:
    """A keysvc server and how to reach it: its address, the caller's credential, TLS.

    `target` is HOST:PORT. `token` is sent as `authorization: Bearer <token>`: an admin's
    token for a KeyServiceClient's admin calls, an authorizer's for a Guard; None sends none.

    TLS: `tls_ca` (the CA that signed the server's certificate; None trusts the system's),
    and for mutual TLS `tls_cert` and `tls_key` (the client's certificate and key), each a
    PEM file's path or the PEM as bytes. Giving any of them makes the channel TLS;
    `credentials` instead gives full control. `tls_server_name` is the name to expect in
    the server's certificate when it is not the target's host. `options` are gRPC channel
    options. The files are read, and the settings checked, when a client or Guard is built.
    """

    target: str
    # Kept out of repr: a Connection in a log line or a traceback must not carry a secret.
    token: str | None = field(default=None, repr=False)
    tls_ca: PemSource | None = None
    tls_cert: PemSource | None = None
    tls_key: PemSource | None = field(default=None, repr=False)
    tls_server_name: str | None = None
    credentials: grpc.ChannelCredentials | None = None
    options: Sequence[tuple[str, Any]] = ()

    def __post_init__(self) -> None:
        # A frozen value: a list handed in would stay mutable (and unhashable) inside it.
        object.__setattr__(self, "options", tuple(self.options))


class ChannelKeywords(TypedDict, total=False):
    """A Connection's settings other than target and token, as the constructors' keywords."""

    credentials: grpc.ChannelCredentials | None
    options: Sequence[tuple[str, Any]]
    tls_ca: PemSource | None
    tls_cert: PemSource | None
    tls_key: PemSource | None
    tls_server_name: str | None


def connection_of(
    owner: str,
    target: str | Connection,
    token: tuple[str, str | None],
    keywords: ChannelKeywords,
) -> Connection:
    """The Connection a constructor of `owner` was given, in either form.

    `token` is the keyword's name and value (KeyServiceClient's `admin_token`, Guard's
    `token`). A Connection with any of them beside it is refused: one of the two would be
    silently ignored.
    """
    unknown = sorted(set(keywords) - ChannelKeywords.__optional_keys__)
    if unknown:
        raise TypeError(f"{owner}() got an unexpected keyword argument {unknown[0]!r}")
    keyword, value = token
    if isinstance(target, Connection):
        beside = [*([keyword] if value is not None else []), *keywords]
        if beside:
            raise TypeError(
                f"{owner}() takes a Connection or keyword settings, not both:"
                f" move {', '.join(beside)} into the Connection"
            )
        connection, where = target, "Connection.token"
    else:
        connection, where = Connection(target, token=value, **keywords), keyword
    # An unset environment variable often arrives as "": fail here, not as a
    # puzzling UNAUTHENTICATED on the first call.
    if connection.token == "":
        raise ValueError(f"{where} is empty: pass None to send no token")
    return connection
