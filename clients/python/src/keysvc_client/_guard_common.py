"""What both Guards share, free of I/O: verdicts, the HTTP answer for each, the channel's settings.

A Verdict is the whole outcome of one check. Turning keysvc's answer (or its failure) into a
Verdict happens here only, so the blocking and asyncio Guards, and every integration, refuse the
same requests with the same status, body and headers.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import grpc

from keysvc_client._common import ModeLike, bearer_credential, scrub_secret, to_mode
from keysvc_client.errors import KeysvcError, from_rpc_error
from keysvc_client.integrations._client_address import IPAddress, parse_address
from keysvc_client.v1 import keysvc_pb2

__all__ = [
    "DEFAULT_TIMEOUT",
    "KeyContext",
    "Verdict",
    "VerdictReason",
]

log = logging.getLogger("keysvc_client.guard")

DEFAULT_TIMEOUT = 0.05
"""Seconds one check may take, retries included: an API server answers 503 rather than wait."""

DEFAULT_MAX_ATTEMPTS = 3

# No real key comes near this (they are 58 characters): a longer header is refused as
# malformed without costing keysvc a call.
_MAX_HEADER_LEN = 1024

# resource:action, as in keysvc's catalogue. Unknown scopes of the right shape are for keysvc
# to refuse; this only catches "links-read", "", a list passed where a name was meant, etc.
_SCOPE_SHAPE = re.compile(r"[a-z][a-z0-9_.-]*:[a-z][a-z0-9_.-]*")

Mode: TypeAlias = Literal["live", "test"]

VerdictReason: TypeAlias = Literal[
    "allowed",
    "missing",
    "malformed",
    "not_found",
    "revoked",
    "expired",
    "insufficient_scope",
    "wrong_mode",
    "ip_not_allowed",
    "refused",
    "unavailable",
    "misconfigured",
]
"""Why a check ended as it did. `allowed` to `ip_not_allowed` are keysvc's reasons; `refused` is a
refusal for a reason newer than this client; `unavailable` means keysvc could not decide
(unreachable, out of time), `misconfigured` that it refused this API server's own request (a
wrong token, an unknown scope)."""

MODE_NAMES: dict[int, Mode] = {keysvc_pb2.MODE_LIVE: "live", keysvc_pb2.MODE_TEST: "test"}

_DECISIONS: dict[int, tuple[int, VerdictReason]] = {
    keysvc_pb2.REASON_MISSING: (401, "missing"),
    keysvc_pb2.REASON_MALFORMED: (401, "malformed"),
    keysvc_pb2.REASON_NOT_FOUND: (401, "not_found"),
    keysvc_pb2.REASON_REVOKED: (401, "revoked"),
    keysvc_pb2.REASON_EXPIRED: (401, "expired"),
    keysvc_pb2.REASON_INSUFFICIENT_SCOPE: (403, "insufficient_scope"),
    keysvc_pb2.REASON_WRONG_MODE: (403, "wrong_mode"),
    keysvc_pb2.REASON_IP_NOT_ALLOWED: (403, "ip_not_allowed"),
}

# The caller of the API is told what to do about it, never what it sent.
_MESSAGES: dict[VerdictReason, str] = {
    "allowed": "allowed",
    "missing": "an API key is required: send it as 'Authorization: Bearer <key>'",
    "malformed": "the API key is not a valid key",
    "not_found": "the API key is not valid",
    "revoked": "the API key has been revoked",
    "expired": "the API key has expired",
    "insufficient_scope": "the API key lacks a required scope",
    "wrong_mode": "the API key's mode is not accepted here",
    # Never which address was seen: behind a misconfigured proxy it would be the proxy's.
    "ip_not_allowed": "the API key may not be used from this client's address",
    "refused": "the API key is not accepted here",
    "unavailable": "the API key could not be checked right now; try again shortly",
    "misconfigured": "the API key could not be checked",
}

# keysvc could not decide: the request itself may well succeed when retried.
_CANNOT_DECIDE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
    }
)


@dataclass(frozen=True, slots=True)
class KeyContext:
    """The authorized key, as a handler sees it: never the key itself."""

    key_id: str
    account_id: str
    mode: Mode
    scopes: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "account_id": self.account_id,
            "mode": self.mode,
            "scopes": list(self.scopes),
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of one check: the HTTP status to answer, why, and the key when recognised.

    `status` is 200 (allowed), 401, 403, the Guard's `unavailable_status` (503 unless
    configured otherwise) when keysvc could not decide, or 500 when keysvc refused this API
    server's own request. Only 200 lets a request through; there is no other way to.
    """

    status: int
    reason: VerdictReason
    message: str
    key: KeyContext | None = None
    required_scopes: tuple[str, ...] = ()
    missing_scopes: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.status == 200 and self.reason == "allowed" and self.key is not None

    def error_body(self) -> dict[str, Any]:
        """The JSON body of a refusal: {"error": {"status", "reason", "message", ...}}."""
        error: dict[str, Any] = {
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
        }
        if self.missing_scopes:
            error["missing_scopes"] = list(self.missing_scopes)
        return {"error": error}

    def headers(self, realm: str = "api") -> dict[str, str]:
        """Headers for the HTTP answer: RFC 6750's challenge on 401 and 403, Retry-After on 503."""
        headers: dict[str, str] = {}
        if self.status == 401:
            challenge = f'Bearer realm="{realm}"'
            # RFC 6750 §3.1: a request without credentials gets the bare challenge.
            if self.reason != "missing":
                challenge += f', error="invalid_token", error_description="{self.message}"'
            headers["WWW-Authenticate"] = challenge
        elif self.reason == "insufficient_scope":
            headers["WWW-Authenticate"] = (
                f'Bearer realm="{realm}", error="insufficient_scope",'
                f' scope="{" ".join(self.required_scopes)}"'
            )
        elif self.reason == "unavailable":
            headers["Retry-After"] = "1"
        if not self.allowed:
            headers["Cache-Control"] = "no-store"
        return headers


@dataclass(frozen=True, slots=True)
class Settings:
    """A Guard's checked configuration, shared by both flavours."""

    timeout: float
    required_mode: keysvc_pb2.Mode.ValueType
    unavailable_status: int
    realm: str
    max_attempts: int

    @property
    def mode_name(self) -> Mode | None:
        return MODE_NAMES.get(self.required_mode)


def settings(
    *,
    timeout: float,
    required_mode: ModeLike | None,
    unavailable_status: int,
    realm: str,
    max_attempts: int,
) -> Settings:
    # bool is an int; True would otherwise pass as a one-second deadline.
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be seconds as a number, not {timeout!r}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    if not 500 <= unavailable_status <= 599:
        # Fail-open is not offered: when keysvc cannot decide, the answer is a server error.
        raise ValueError(
            f"unavailable_status must be a 5xx status (503 by default), not {unavailable_status!r}"
        )
    if not 1 <= max_attempts <= 5:
        raise ValueError(f"max_attempts must be 1 to 5 (gRPC's limit), not {max_attempts!r}")
    if not realm or '"' in realm or "\\" in realm:
        raise ValueError(f"realm must be non-empty, without quotes or backslashes: {realm!r}")
    return Settings(
        timeout=float(timeout),
        required_mode=keysvc_pb2.MODE_UNSPECIFIED
        if required_mode is None
        else to_mode(required_mode),
        unavailable_status=unavailable_status,
        realm=realm,
        max_attempts=max_attempts,
    )


# Checked tuples of scopes, by the tuple given: a route's scopes are checked once, not on
# every request (the integrations pass each route's tuple).
_CHECKED: dict[tuple[Any, ...], tuple[str, ...]] = {}
_MAX_CHECKED = 1_024


def required_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """`scopes` checked for shape, duplicates folded, in the order given.

    Called where a route declares its scopes, so a typo fails at import, not on a request.
    """
    if type(scopes) is tuple:
        try:
            checked = _CHECKED.get(scopes)
        except TypeError:  # something unhashable in it: refused below
            checked = None
        if checked is None:
            checked = _required_scopes(scopes)
            if len(_CHECKED) < _MAX_CHECKED:
                _CHECKED[scopes] = checked  # only a valid tuple gets here
        return checked
    return _required_scopes(scopes)


def _required_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    if isinstance(scopes, str):
        raise TypeError("scopes must be an iterable of scope names, not a single string")
    folded: dict[str, None] = {}
    for scope in scopes:
        if not isinstance(scope, str):
            raise TypeError(f"a scope is a name like 'links:read', not {scope!r}")
        if not _SCOPE_SHAPE.fullmatch(scope):
            raise ValueError(f"{scope!r} is not a scope name: expected resource:action")
        folded[scope] = None
    return tuple(folded)


def channel_options(
    settings: Settings, options: Sequence[tuple[str, Any]]
) -> list[tuple[str, Any]]:
    """gRPC's own retry policy for Authorize and quick reconnection, unless `options` say otherwise.

    Authorize changes nothing but a last-used time, so retrying it is safe; the policy names
    it alone, so nothing else this channel might carry is ever retried. gRPC keeps every
    attempt within the call's deadline, and its retry throttling stops retrying when most
    calls fail, so an outage does not multiply the load on keysvc.
    """
    method_config: dict[str, Any] = {
        "name": [{"service": "keysvc.v1.KeyService", "method": "Authorize"}],
    }
    if settings.max_attempts > 1:
        method_config["retryPolicy"] = {
            "maxAttempts": settings.max_attempts,
            "initialBackoff": "0.005s",
            "maxBackoff": "0.02s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    service_config = {
        "methodConfig": [method_config],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    }
    defaults: list[tuple[str, Any]] = [
        ("grpc.service_config", json.dumps(service_config)),
        ("grpc.enable_retries", 1),
        # A channel kept for the API server's lifetime must find keysvc again within a second
        # of its return, not after gRPC's default backoff of up to two minutes.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    given = {name for name, _ in options}
    return [option for option in defaults if option[0] not in given] + list(options)


def precheck(authorization: str | None, required: tuple[str, ...]) -> Verdict | str:
    """The verdict on a header that needs no keysvc call, or the header for keysvc to decide on.

    Only what keysvc itself would answer without a look-up: no key at all, or far too long.
    """
    if authorization is None:
        return refused(401, "missing", required)
    value = authorization.strip()
    if not value or bearer_credential(value) == "":
        return refused(401, "missing", required)
    if len(value) > _MAX_HEADER_LEN:
        return refused(401, "malformed", required)
    return authorization


def client_ip_field(client_ip: str | IPAddress | None) -> str:
    """AuthorizeRequest.client_ip for the address an integration found, normalised (an
    IPv4-mapped IPv6 address as IPv4); "" when there is none or it is not an address, which
    keysvc refuses for a key restricted to allowed IPs."""
    if client_ip is None:
        return ""
    try:
        return _CLIENT_IPS[client_ip]
    except (KeyError, TypeError):
        pass
    if isinstance(client_ip, str):
        address = parse_address(client_ip)
    elif isinstance(client_ip, IPAddress):
        address = parse_address(str(client_ip))
    else:
        raise TypeError(f"client_ip is an IP address or None, not {client_ip!r}")
    field = "" if address is None else str(address)
    # Parsing costs more than a near-cache hit: the latest addresses are remembered.
    if len(_CLIENT_IPS) >= _MAX_CLIENT_IPS:
        _CLIENT_IPS.clear()
    _CLIENT_IPS[client_ip] = field
    return field


_CLIENT_IPS: dict[str | IPAddress, str] = {}
_MAX_CLIENT_IPS = 4_096


def refused(status: int, reason: VerdictReason, required: tuple[str, ...]) -> Verdict:
    return Verdict(
        status=status, reason=reason, message=_MESSAGES[reason], required_scopes=required
    )


def from_response(
    response: keysvc_pb2.AuthorizeResponse, required: tuple[str, ...], settings: Settings
) -> Verdict:
    """keysvc's decision as a Verdict, re-checking an `allowed` against what was asked for."""
    key = None
    mode = MODE_NAMES.get(response.mode)
    if response.key_id and mode is not None:
        key = KeyContext(
            key_id=response.key_id,
            account_id=response.account_id,
            mode=mode,
            scopes=tuple(response.scopes),
        )
    if response.allowed and response.reason == keysvc_pb2.REASON_ALLOWED:
        if key is None:
            log.error("keysvc allowed a key without describing it; refusing the request")
            return unavailable(required, settings)
        # Defence in depth: an allowed key must hold what this server asked for, even from a
        # keysvc that ignored part of the request.
        missing = tuple(scope for scope in required if scope not in key.scopes)
        if missing:
            return insufficient(key, required, missing)
        if settings.mode_name is not None and key.mode != settings.mode_name:
            return wrong_mode(key, required, settings.mode_name)
        return allowed(key, required)
    status, reason = _DECISIONS.get(response.reason, (0, "refused"))
    if status == 0:
        # A reason newer than this client: keysvc said no, and its status says how.
        status = response.http_status if response.http_status in (401, 403) else 401
    if reason == "insufficient_scope" and key is not None:
        return insufficient(key, required, tuple(response.missing_scopes))
    if reason == "wrong_mode" and key is not None and settings.mode_name is not None:
        return wrong_mode(key, required, settings.mode_name)
    return refused_key(status, reason, key, required)


# The verdicts on a recognised key, built here only: the near cache (keysvc_client._near_cache)
# decides a held key with them, so that its verdicts are keysvc's to the last field.


def allowed(key: KeyContext, required: tuple[str, ...]) -> Verdict:
    return Verdict(
        status=200,
        reason="allowed",
        message=_MESSAGES["allowed"],
        key=key,
        required_scopes=required,
    )


def refused_key(
    status: int, reason: VerdictReason, key: KeyContext | None, required: tuple[str, ...]
) -> Verdict:
    return Verdict(
        status=status, reason=reason, message=_MESSAGES[reason], key=key, required_scopes=required
    )


def insufficient(key: KeyContext, required: tuple[str, ...], missing: tuple[str, ...]) -> Verdict:
    message = _MESSAGES["insufficient_scope"]
    if missing:
        message = (
            f"the API key lacks the scope{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
        )
    return Verdict(
        status=403,
        reason="insufficient_scope",
        message=message,
        key=key,
        required_scopes=required,
        missing_scopes=missing,
    )


def wrong_mode(key: KeyContext, required: tuple[str, ...], accepted: Mode) -> Verdict:
    return Verdict(
        status=403,
        reason="wrong_mode",
        message=f"{key.mode} keys are not accepted here: use a {accepted} key",
        key=key,
        required_scopes=required,
    )


def unavailable(required: tuple[str, ...], settings: Settings) -> Verdict:
    return refused(settings.unavailable_status, "unavailable", required)


def from_rpc_failure(
    err: grpc.RpcError, authorization: str, required: tuple[str, ...], settings: Settings
) -> Verdict:
    """The verdict when Authorize failed: keysvc could not decide, or refused our own request."""
    error = from_rpc_error(err)
    return from_failure(error.code, error.details, authorization, required, settings)


def from_session_answer(
    answer: keysvc_pb2.SessionResponse,
    decided: Callable[[keysvc_pb2.AuthorizeResponse], Verdict],
    authorization: str,
    required: tuple[str, ...],
    settings: Settings,
) -> Verdict:
    """The verdict on keysvc's answer to a Session request: `decided` of its decision; for an
    error (a gRPC status code number), as the same failure of the unary Authorize."""
    kind = answer.WhichOneof("response")
    if kind == "authorize":
        return decided(answer.authorize)
    if kind == "error":
        status = _STATUS_CODES.get(answer.error.code, grpc.StatusCode.UNKNOWN)
        return from_failure(status, answer.error.message, authorization, required, settings)
    return from_failure(
        grpc.StatusCode.INTERNAL, f"an answer of kind {kind}", authorization, required, settings
    )


_STATUS_CODES = {status.value[0]: status for status in grpc.StatusCode}


def from_failure(
    code: grpc.StatusCode,
    details: str,
    authorization: str,
    required: tuple[str, ...],
    settings: Settings,
) -> Verdict:
    # The details come from keysvc or gRPC and are logged: they must not carry the key.
    error = KeysvcError(code, details)
    details = (scrub_secret(error, authorization) or error).details
    if code in _CANNOT_DECIDE:
        log.warning(
            "keysvc could not decide (%s: %s); answering %d",
            code.name,
            details,
            settings.unavailable_status,
        )
        return unavailable(required, settings)
    log.error(
        "keysvc refused this API server's Authorize call (%s: %s): check the Guard's token, "
        "TLS settings and required scopes; answering 500",
        code.name,
        details,
    )
    return refused(500, "misconfigured", required)


def grpc_status(verdict: Verdict) -> grpc.StatusCode:
    """The status a gRPC API server answers with for a refused verdict."""
    if verdict.status == 401:
        return grpc.StatusCode.UNAUTHENTICATED
    if verdict.status == 403:
        return grpc.StatusCode.PERMISSION_DENIED
    if verdict.reason == "unavailable":
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


def authorization_value(values: Sequence[str]) -> str | None:
    """One Authorization value from every one the request carried (HTTP headers, gRPC metadata).

    Several are combined as HTTP combines repeated fields, which no key matches: a request
    that sends two keys is refused as malformed rather than judged on either.
    """
    if not values:
        return None
    return ", ".join(values) if len(values) > 1 else values[0]


def scope_list(scopes: str | Iterable[str]) -> tuple[str, ...]:
    """Scopes declared in a route table: one name, or an iterable of names."""
    return required_scopes((scopes,) if isinstance(scopes, str) else scopes)


def route_table(routes: Mapping[str, str | Iterable[str]]) -> dict[str, tuple[str, ...]]:
    return {route: scope_list(scopes) for route, scopes in routes.items()}
