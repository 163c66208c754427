"""What the sync and asyncio clients share: argument conversion, request building, metadata.

Everything here is free of I/O so that both flavours build byte-identical requests.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Final, Literal, TypeAlias, TypeVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from keysvc_client.errors import KeysvcError
from keysvc_client.v1 import keysvc_pb2

__all__ = [
    "ON_BEHALF_OF",
    "UNSET",
    "Metadata",
    "ModeLike",
    "StatusLike",
    "Unset",
    "authorize_request",
    "bearer_credential",
    "checked_on_behalf_of",
    "create_key_request",
    "list_keys_request",
    "metadata_for",
    "revoke_key_request",
    "revoke_leaked_keys_request",
    "roll_key_request",
    "scrub_secret",
    "scrub_secrets",
    "to_duration",
    "to_mode",
    "to_status",
    "to_timestamp",
    "update_key_request",
]

ModeLike: TypeAlias = "str | keysvc_pb2.Mode.ValueType"
"""`"live"` or `"test"` (any case), or keysvc_pb2.MODE_LIVE / MODE_TEST."""

StatusLike: TypeAlias = "str | keysvc_pb2.KeyStatus.ValueType"
"""`"active"`, `"revoked"` or `"expired"` (any case), or the matching keysvc_pb2.KEY_STATUS_*."""


class Unset(enum.Enum):
    """The type of UNSET: "leave this field as it is", where None means "clear it"."""

    UNSET = enum.auto()

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.UNSET

Metadata: TypeAlias = tuple[tuple[str, str], ...]

_MODES: dict[str, keysvc_pb2.Mode.ValueType] = {
    "live": keysvc_pb2.MODE_LIVE,
    "test": keysvc_pb2.MODE_TEST,
}
_STATUSES: dict[str, keysvc_pb2.KeyStatus.ValueType] = {
    "active": keysvc_pb2.KEY_STATUS_ACTIVE,
    "revoked": keysvc_pb2.KEY_STATUS_REVOKED,
    "expired": keysvc_pb2.KEY_STATUS_EXPIRED,
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
    return _strings(scopes, what, "scope names")


def _strings(values: Iterable[str], what: str, items: str) -> list[str]:
    # A bare string is an Iterable[str] too, and would silently become one item per character.
    if isinstance(values, str):
        raise TypeError(f"{what} must be an iterable of {items}, not a single string")
    return list(values)


def to_timestamp(value: datetime, what: str) -> Timestamp:
    """`value` as a Timestamp; a naive datetime is refused, since its zone would be a guess."""
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{what} must be timezone-aware (e.g. datetime.now(UTC) + timedelta(days=30)),"
            f" got the naive {value.isoformat()}"
        )
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def to_duration(value: timedelta, what: str) -> Duration:
    """`value` as a Duration; whether it is in range is the server's to say."""
    # A number would be ambiguous (seconds? hours?), and bool is a number too.
    if not isinstance(value, timedelta):
        raise TypeError(f"{what} must be a timedelta, not {type(value).__name__}")
    duration = Duration()
    duration.FromTimedelta(value)
    return duration


ON_BEHALF_OF = "x-keysvc-on-behalf-of"
"""The metadata an admin tool sends to say on whose behalf it calls: keysvc's audit trail then
records the actor as "<user> via <caller>"."""


def metadata_for(token: str | None, on_behalf_of: str | None = None) -> Metadata | None:
    """The call metadata carrying `token` (checked non-empty by connection_of) and the user
    the caller acts for, if any."""
    metadata: list[tuple[str, str]] = []
    if token is not None:
        metadata.append(("authorization", f"{_BEARER_SCHEME} {token}"))
    if on_behalf_of is not None:
        metadata.append((ON_BEHALF_OF, on_behalf_of))
    return tuple(metadata) or None


def checked_on_behalf_of(value: str | None) -> str | None:
    """`value` if it can be sent as the on-behalf-of metadata; ValueError if not, when the
    client is built rather than as a puzzling error on its first call."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"on_behalf_of must be a str, not {type(value).__name__}")
    # gRPC metadata values are printable ASCII; keysvc also refuses a blank one.
    if not value.strip() or not all(" " <= c <= "~" for c in value):
        raise ValueError(
            f"on_behalf_of must be a non-empty user name of printable ASCII, got {value!r}"
        )
    return value


def bearer_credential(value: str) -> str | None:
    """The credential of an `Authorization: Bearer <credential>` value ("" when the scheme is
    Bearer with nothing after it); None when the value is not of the Bearer scheme.

    The scheme is case-insensitive (RFC 9110), as keysvc's own parser takes it.
    """
    scheme, _, rest = value.strip().partition(" ")
    return rest.strip() if scheme.lower() == _BEARER_SCHEME.lower() else None


def create_key_request(
    account_id: str,
    name: str,
    mode: ModeLike,
    scopes: Iterable[str],
    *,
    expire_time: datetime | None = None,
    allowed_ips: Iterable[str] = (),
) -> keysvc_pb2.CreateKeyRequest:
    return keysvc_pb2.CreateKeyRequest(
        account_id=account_id,
        name=name,
        mode=to_mode(mode),
        scopes=_scopes(scopes, "scopes"),
        expire_time=None if expire_time is None else to_timestamp(expire_time, "expire_time"),
        allowed_ips=_strings(allowed_ips, "allowed_ips", "addresses or CIDR ranges"),
    )


def revoke_key_request(account_id: str, key_id: str, reason: str) -> keysvc_pb2.RevokeKeyRequest:
    return keysvc_pb2.RevokeKeyRequest(account_id=account_id, id=key_id, reason=reason)


def roll_key_request(account_id: str, key_id: str, grace: timedelta) -> keysvc_pb2.RollKeyRequest:
    return keysvc_pb2.RollKeyRequest(
        account_id=account_id, id=key_id, grace=to_duration(grace, "grace")
    )


def update_key_request(
    account_id: str,
    key_id: str,
    *,
    name: str | None,
    scopes: Iterable[str] | None,
    allowed_ips: Iterable[str] | None,
    expire_time: datetime | Literal[Unset.UNSET] | None,
) -> keysvc_pb2.UpdateKeyRequest:
    """An UpdateKeyRequest whose mask names exactly the fields given.

    The mask is always explicit: an omitted mask would mean "every field set in the key",
    and an empty list or a cleared expiry are not "set" in proto3, so they could not be asked
    for without one.
    """
    key = keysvc_pb2.Key(account_id=account_id, id=key_id)
    paths = []
    if name is not None:
        key.name = name
        paths.append("name")
    if scopes is not None:
        key.scopes.extend(_scopes(scopes, "scopes"))
        paths.append("scopes")
    if allowed_ips is not None:
        key.allowed_ips.extend(_strings(allowed_ips, "allowed_ips", "addresses or CIDR ranges"))
        paths.append("allowed_ips")
    if expire_time is not UNSET:
        if expire_time is not None:
            key.expire_time.CopyFrom(to_timestamp(expire_time, "expire_time"))
        paths.append("expire_time")
    if not paths:
        raise ValueError(
            "update_key: nothing to change: give name, scopes, allowed_ips or expire_time"
        )
    return keysvc_pb2.UpdateKeyRequest(key=key, update_mask=FieldMask(paths=paths))


def revoke_leaked_keys_request(
    keys: Iterable[str], source: str
) -> keysvc_pb2.RevokeLeakedKeysRequest:
    return keysvc_pb2.RevokeLeakedKeysRequest(
        keys=_strings(keys, "keys", "raw keys"), source=source
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
    api_key: str,
    required_scopes: Iterable[str],
    required_mode: ModeLike | None,
    client_ip: str = "",
) -> keysvc_pb2.AuthorizeRequest:
    return keysvc_pb2.AuthorizeRequest(
        api_key=api_key,
        required_scopes=_scopes(required_scopes, "required_scopes"),
        required_mode=_mode_or_any(required_mode),
        client_ip=client_ip,
    )


def scrub_secret(error: KeysvcError, api_key: str) -> KeysvcError | None:
    """A copy of `error` with the key cut out of its details, or None if they never held it."""
    return scrub_secrets(error, (api_key,))


def scrub_secrets(error: KeysvcError, api_keys: Iterable[str]) -> KeysvcError | None:
    """A copy of `error` with every one of the keys cut out of its details, or None if they
    never held any."""
    secrets = set()
    for api_key in api_keys:
        secrets.add(api_key.strip())
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
