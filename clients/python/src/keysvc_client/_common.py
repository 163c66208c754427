"""What the sync and asyncio clients share: argument conversion, request building, metadata.

Everything here is free of I/O so that both flavours build byte-identical requests.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeAlias, TypeVar

from keysvc_client.errors import KeysvcError
from keysvc_client.v1 import keysvc_pb2

__all__ = [
    "Metadata",
    "ModeLike",
    "StatusLike",
    "authorize_request",
    "bearer_credential",
    "create_key_request",
    "list_keys_request",
    "metadata_for",
    "scrub_secret",
    "to_mode",
    "to_status",
]

ModeLike: TypeAlias = "str | keysvc_pb2.Mode.ValueType"
"""`"live"` or `"test"` (any case), or keysvc_pb2.MODE_LIVE / MODE_TEST."""

StatusLike: TypeAlias = "str | keysvc_pb2.KeyStatus.ValueType"
"""`"active"` or `"revoked"` (any case), or keysvc_pb2.KEY_STATUS_ACTIVE / KEY_STATUS_REVOKED."""

Metadata: TypeAlias = tuple[tuple[str, str], ...]

_MODES: dict[str, keysvc_pb2.Mode.ValueType] = {
    "live": keysvc_pb2.MODE_LIVE,
    "test": keysvc_pb2.MODE_TEST,
}
_STATUSES: dict[str, keysvc_pb2.KeyStatus.ValueType] = {
    "active": keysvc_pb2.KEY_STATUS_ACTIVE,
    "revoked": keysvc_pb2.KEY_STATUS_REVOKED,
}

_E = TypeVar("_E", bound=int)

# Shorter than any real key: replacing it in a message would garble the message
# without protecting anything.
_MIN_SECRET_LEN = 8
_REDACTED = "[redacted]"
_BEARER_SCHEME = "Bearer"


def to_mode(value: ModeLike) -> keysvc_pb2.Mode.ValueType:
    # UNSPECIFIED is refused: "no mode filter" is spelled None, and a key cannot
    # be created without a mode.
    return _convert(value, _MODES, "mode")


def _mode_or_any(value: ModeLike | None) -> keysvc_pb2.Mode.ValueType:
    return keysvc_pb2.MODE_UNSPECIFIED if value is None else to_mode(value)


def to_status(value: StatusLike) -> keysvc_pb2.KeyStatus.ValueType:
    return _convert(value, _STATUSES, "status")


def _convert(value: str | _E, table: dict[str, _E], what: str) -> _E:
    valid = ", ".join(repr(name) for name in table)
    if isinstance(value, str):
        try:
            return table[value.lower()]
        except KeyError:
            raise ValueError(f"unknown {what} {value!r}: expected one of {valid}") from None
    # bool is an int, and True would otherwise pass as the enum value 1.
    if isinstance(value, int) and not isinstance(value, bool) and value in table.values():
        return value
    raise ValueError(
        f"invalid {what} {value!r}: expected one of {valid} or the matching enum value"
    )


def _scopes(scopes: Iterable[str], what: str) -> list[str]:
    # A bare string is an Iterable[str] too, and would silently become one scope per character.
    if isinstance(scopes, str):
        raise TypeError(f"{what} must be an iterable of scope names, not a single string")
    return list(scopes)


def metadata_for(token: str | None) -> Metadata | None:
    """The call metadata carrying `token` (checked non-empty by connection_of), if any."""
    if token is None:
        return None
    return (("authorization", f"{_BEARER_SCHEME} {token}"),)


def bearer_credential(value: str) -> str | None:
    """The credential of an `Authorization: Bearer <credential>` value ("" when the scheme is
    Bearer with nothing after it); None when the value is not of the Bearer scheme.

    The scheme is case-insensitive (RFC 9110), as keysvc's own parser takes it.
    """
    scheme, _, rest = value.strip().partition(" ")
    return rest.strip() if scheme.lower() == _BEARER_SCHEME.lower() else None


def create_key_request(
    account_id: str, name: str, mode: ModeLike, scopes: Iterable[str]
) -> keysvc_pb2.CreateKeyRequest:
    return keysvc_pb2.CreateKeyRequest(
        account_id=account_id, name=name, mode=to_mode(mode), scopes=_scopes(scopes, "scopes")
    )


def list_keys_request(
    account_id: str,
    *,
    page_size: int,
    page_token: str,
    mode: ModeLike | None,
    status: StatusLike | None,
) -> keysvc_pb2.ListKeysRequest:
    return keysvc_pb2.ListKeysRequest(
        account_id=account_id,
        page_size=page_size,
        page_token=page_token,
        mode=_mode_or_any(mode),
        status=keysvc_pb2.KEY_STATUS_UNSPECIFIED if status is None else to_status(status),
    )


def authorize_request(
    api_key: str, required_scopes: Iterable[str], required_mode: ModeLike | None
) -> keysvc_pb2.AuthorizeRequest:
    return keysvc_pb2.AuthorizeRequest(
        api_key=api_key,
        required_scopes=_scopes(required_scopes, "required_scopes"),
        required_mode=_mode_or_any(required_mode),
    )


def scrub_secret(error: KeysvcError, api_key: str) -> KeysvcError | None:
    """A copy of `error` with the key cut out of its details, or None if they never held it."""
    secrets = {api_key.strip()}
    credential = bearer_credential(api_key)
    if credential is not None:
        secrets.add(credential)
    details = error.details
    # Longest first, so the whole header goes before the bare key inside it.
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= _MIN_SECRET_LEN:
            details = details.replace(secret, _REDACTED)
    if details == error.details:
        return None
    return type(error)(error.code, details)
