"""How keys and audit events read on the pages: times in UTC with a relative hint, statuses,
actions. Pure functions of keysvc's messages and the time now."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from keysvc_client import AuditEvent, Key, keysvc_pb2

__all__ = [
    "EventView",
    "KeyView",
    "Moment",
    "action",
    "event_view",
    "is_usable",
    "key_view",
    "mode",
    "moment",
    "relative",
    "status",
]

_UNITS = (
    ("year", 365 * 86400),
    ("month", 30 * 86400),
    ("day", 86400),
    ("hour", 3600),
    ("minute", 60),
    ("second", 1),
)


@dataclass(frozen=True)
class Moment:
    """A point in time as a page shows it: `text` (2026-12-02 03:14:15Z), `iso` for the
    <time datetime> attribute, and `hint` ("3 minutes ago", "in 89 days")."""

    text: str
    iso: str
    hint: str


def relative(then: datetime, now: datetime) -> str:
    seconds = int((now - then).total_seconds())
    if abs(seconds) < 10:
        return "just now"
    for unit, size in _UNITS:
        count = abs(seconds) // size
        if count:
            amount = f"{count} {unit}{'' if count == 1 else 's'}"
            return f"{amount} ago" if seconds > 0 else f"in {amount}"
    return "just now"  # pragma: no cover: seconds >= 10 always has a unit


def moment(stamp: Timestamp, now: datetime, *, is_set: bool) -> Moment | None:
    if not is_set:
        return None
    value = stamp.ToDatetime(tzinfo=UTC)
    return Moment(
        text=value.strftime("%Y-%m-%d %H:%M:%SZ"),
        iso=value.strftime("%Y-%m-%dT%H:%M:%SZ"),
        hint=relative(value, now),
    )


def mode(value: keysvc_pb2.Mode.ValueType) -> str:
    return "test" if value == keysvc_pb2.MODE_TEST else "live"


def status(key: Key) -> str:
    """active, expired or revoked."""
    if key.status == keysvc_pb2.KEY_STATUS_REVOKED:
        return "revoked"
    if key.status == keysvc_pb2.KEY_STATUS_EXPIRED:
        return "expired"
    return "active"


def is_usable(key: Key) -> bool:
    """Whether the key can still be revoked, rolled or edited."""
    return status(key) == "active"


_ACTIONS = {
    keysvc_pb2.AUDIT_ACTION_KEY_CREATED: "Created",
    keysvc_pb2.AUDIT_ACTION_KEY_ROLLED: "Rolled",
    keysvc_pb2.AUDIT_ACTION_KEY_UPDATED: "Updated",
    keysvc_pb2.AUDIT_ACTION_KEY_REVOKED: "Revoked",
    keysvc_pb2.AUDIT_ACTION_KEY_LEAK_REVOKED: "Revoked as leaked",
}


def action(event: AuditEvent) -> str:
    return _ACTIONS.get(event.action, keysvc_pb2.AuditAction.Name(event.action))


@dataclass(frozen=True)
class KeyView:
    """A key as the pages show it."""

    id: str
    name: str
    prefix: str
    mode: str
    scopes: tuple[str, ...]
    allowed_ips: tuple[str, ...]
    status: str
    usable: bool
    created: Moment | None
    last_used: Moment | None
    expires: Moment | None
    revoked: Moment | None
    revocation_reason: str


def key_view(key: Key, now: datetime) -> KeyView:
    return KeyView(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        mode=mode(key.mode),
        scopes=tuple(key.scopes),
        allowed_ips=tuple(key.allowed_ips),
        status=status(key),
        usable=is_usable(key),
        created=moment(key.created_at, now, is_set=key.HasField("created_at")),
        last_used=moment(key.last_used_at, now, is_set=key.HasField("last_used_at")),
        expires=moment(key.expire_time, now, is_set=key.HasField("expire_time")),
        revoked=moment(key.revoked_at, now, is_set=key.HasField("revoked_at")),
        revocation_reason=key.revocation_reason,
    )


@dataclass(frozen=True)
class EventView:
    """An audit event as the audit page shows it."""

    occurred: Moment | None
    action: str
    key_id: str
    related_key_id: str
    actor: str
    peer: str
    reason: str
    changes: tuple[str, ...]


def event_view(event: AuditEvent, now: datetime) -> EventView:
    return EventView(
        occurred=moment(event.occurred_at, now, is_set=event.HasField("occurred_at")),
        action=action(event),
        key_id=event.key_id,
        related_key_id=event.related_key_id,
        actor=event.actor,
        peer=event.peer,
        reason=event.reason,
        changes=tuple(
            f"{change.field}: {change.before or '-'} → {change.after or '-'}"
            for change in event.changes
        ),
    )
