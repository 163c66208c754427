"""TLS for the clients: channel credentials and options from PEM files, shared by both flavours."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

import grpc

from keysvc_client._connection import Connection, PemSource

__all__ = ["channel_security"]

Options: TypeAlias = list[tuple[str, Any]]


def channel_security(
    connection: Connection, options: Sequence[tuple[str, Any]] | None = None
) -> tuple[grpc.ChannelCredentials | None, Options]:
    """The channel credentials (None: plaintext) and options `connection` asks for.

    `options`, when given, replace the connection's own (a Guard adds its defaults to them).
    """
    channel_options = list(connection.options if options is None else options)
    credentials = connection.credentials
    tls_ca, tls_cert, tls_key = connection.tls_ca, connection.tls_cert, connection.tls_key
    tls_server_name = connection.tls_server_name
    uses_tls_files = any(v is not None for v in (tls_ca, tls_cert, tls_key))
    if credentials is not None and uses_tls_files:
        raise ValueError("pass either credentials or tls_ca/tls_cert/tls_key, not both")
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("a client certificate needs both tls_cert and tls_key")
    if uses_tls_files:
        credentials = grpc.ssl_channel_credentials(
            # None trusts the system's certificate authorities.
            root_certificates=_pem(tls_ca, "tls_ca"),
            private_key=_pem(tls_key, "tls_key"),
            certificate_chain=_pem(tls_cert, "tls_cert"),
        )
    if tls_server_name is not None:
        if credentials is None:
            raise ValueError("tls_server_name needs TLS: give tls_ca, tls_cert or credentials")
        if not tls_server_name:
            raise ValueError("tls_server_name is empty: pass None to check the target's name")
        channel_options.append(("grpc.ssl_target_name_override", tls_server_name))
    return credentials, channel_options


def _pem(source: PemSource | None, what: str) -> bytes | None:
    if source is None:
        return None
    if isinstance(source, bytes):
        data = source
    else:
        # A str is a path; PEM text belongs in bytes. Say so rather than "no such file".
        if isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
            raise ValueError(f"{what} looks like PEM text: pass it as bytes (a str is a path)")
        try:
            data = Path(source).read_bytes()
        except OSError as err:
            raise ValueError(f"cannot read {what} {os.fspath(source)}: {err.strerror}") from err
    # gRPC would only fail at the first handshake, as an UNAVAILABLE that names nothing.
    if b"-----BEGIN " not in data:
        raise ValueError(f"{what} is not PEM (no '-----BEGIN' line)")
    return data
