"""Who may reach the server and how, from the settings: TLS for the listener, and the Gate
that admits callers (keysvc.access)."""

from __future__ import annotations

import ipaddress
import logging
import re
from pathlib import Path

import grpc

from keysvc.access import admin_token
from keysvc.access.callers import Callers, CallersError, Role
from keysvc.access.gate import Gate
from keysvc.core.errors import StartupError
from keysvc.runtime.config import Settings

log = logging.getLogger(__name__)


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials for the listener, or None for plaintext (refused beyond loopback)."""
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise StartupError("--tls-client-ca needs --tls-cert and --tls-key (TLS) as well")
        if not is_loopback(settings.listen) and not settings.insecure:
            raise StartupError(
                f"refusing to listen on {settings.listen} without TLS: keys and tokens would"
                " cross the network in clear text. Give --tls-cert and --tls-key, or pass"
                " --insecure if something in front of keysvc terminates TLS"
            )
        if not is_loopback(settings.listen):
            log.warning("--insecure: serving %s in clear text", settings.listen)
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise StartupError("TLS needs both --tls-cert and --tls-key")
    try:
        chain = settings.tls_cert.read_bytes()
        key = settings.tls_key.read_bytes()
        client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    except OSError as err:
        raise StartupError(f"cannot read TLS file {err.filename}: {err.strerror}") from err
    # gRPC itself would only fail to bind, without saying which file is wrong.
    _expect_pem(chain, b"CERTIFICATE", "--tls-cert", settings.tls_cert)
    _expect_pem(key, b"PRIVATE KEY", "--tls-key", settings.tls_key)
    if client_ca is not None:
        _expect_pem(client_ca, b"CERTIFICATE", "--tls-client-ca", settings.tls_client_ca)
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def check_health_listen(settings: Settings) -> None:
    """The health listener is plaintext, so it stays on loopback, --insecure or not."""
    if settings.health_listen is not None and not is_loopback(settings.health_listen):
        raise StartupError(
            f"--health-listen {settings.health_listen}: the health listener is plaintext and"
            " only for checks from the same machine: give a loopback address, such as"
            " 127.0.0.1:50052"
        )


def _expect_pem(data: bytes, label: bytes, flag: str, path: Path | None) -> None:
    # "-----BEGIN CERTIFICATE-----", "-----BEGIN EC PRIVATE KEY-----" and the like.
    if not re.search(rb"-----BEGIN [A-Z ]*" + label + rb"-----", data):
        raise StartupError(f"{flag} {path}: not a PEM {label.decode().lower()}")


def gate(settings: Settings) -> Gate:
    """The Gate for these settings: configured callers plus the admin token, if any."""
    try:
        callers = Callers.load(settings.callers) if settings.callers else Callers()
    except CallersError as err:
        raise StartupError(str(err)) from err
    if settings.callers:
        log.info(
            "callers: %s (%d admins, %d authorizers)",
            settings.callers,
            callers.count(Role.ADMIN),
            callers.count(Role.AUTHORIZER),
        )
    if callers.uses_client_certificates and settings.tls_client_ca is None:
        # Without mutual TLS no client presents a certificate, so these can never match.
        log.warning("callers with a client_identity cannot be recognised without --tls-client-ca")
    if settings.admin_token:
        log.info("admin token: taken from $KEYSVC_ADMIN_TOKEN")
        callers = callers.with_token("admin-token", Role.ADMIN, settings.admin_token)
    elif not callers.has_admins:
        path = settings.admin_token_path
        try:
            token, generated = admin_token.ensure(path)
        except admin_token.AdminTokenError as err:
            raise StartupError(str(err)) from err
        log.info(
            "admin token: %s %s (mode 0600); the keysvc CLI reads it from there",
            "generated into" if generated else "read from",
            path.resolve(),
        )
        callers = callers.with_token("admin-token", Role.ADMIN, token)
    else:
        log.info("admin token: none; the admins are those of the callers file")
    # Authorize needs no credential only on the zero-config loopback default.
    open_authorize = is_loopback(settings.listen) and not callers.has_authorizers
    log.info(
        "Authorize: %s",
        "open to any local caller (loopback, no authorizers configured)"
        if open_authorize
        else "authorizer or admin credential required",
    )
    return Gate(callers, open_authorize=open_authorize)
