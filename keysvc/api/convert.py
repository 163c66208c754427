"""Protobuf messages to domain values and back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from keysvc_client.v1 import keysvc_pb2 as pb

from keysvc.core.errors import InvalidArgument
from keysvc.core.model import (
    UPDATABLE_FIELDS,
    ApiKey,
    AuditAction,
    AuditEvent,
    Decision,
    KeyGrant,
    KeyStatus,
    KeyUpdate,
    LeakedKey,
    LeakOutcome,
    Mode,
    Reason,
)

_MODES: dict[Mode, pb.Mode.ValueType] = {Mode.LIVE: pb.MODE_LIVE, Mode.TEST: pb.MODE_TEST}
_MODES_FROM_PB = {value: mode for mode, value in _MODES.items()}
_STATUSES: dict[KeyStatus, pb.KeyStatus.ValueType] = {
    KeyStatus.ACTIVE: pb.KEY_STATUS_ACTIVE,
    KeyStatus.REVOKED: pb.KEY_STATUS_REVOKED,
    KeyStatus.EXPIRED: pb.KEY_STATUS_EXPIRED,
}
_STATUSES_FROM_PB = {value: status for status, value in _STATUSES.items()}
_AUDIT_ACTIONS = {
    AuditAction.KEY_CREATED: pb.AUDIT_ACTION_KEY_CREATED,
    AuditAction.KEY_REVOKED: pb.AUDIT_ACTION_KEY_REVOKED,
    AuditAction.KEY_ROLLED: pb.AUDIT_ACTION_KEY_ROLLED,
    AuditAction.KEY_UPDATED: pb.AUDIT_ACTION_KEY_UPDATED,
    AuditAction.KEY_LEAK_REVOKED: pb.AUDIT_ACTION_KEY_LEAK_REVOKED,
}
_LEAK_OUTCOMES = {
    LeakOutcome.REVOKED: pb.LEAK_OUTCOME_REVOKED,
    LeakOutcome.ALREADY_REVOKED: pb.LEAK_OUTCOME_ALREADY_REVOKED,
    LeakOutcome.NOT_FOUND: pb.LEAK_OUTCOME_NOT_FOUND,
}
_REASONS = {
    Reason.ALLOWED: pb.REASON_ALLOWED,
    Reason.MISSING: pb.REASON_MISSING,
    Reason.MALFORMED: pb.REASON_MALFORMED,
    Reason.NOT_FOUND: pb.REASON_NOT_FOUND,
    Reason.REVOKED: pb.REASON_REVOKED,
    Reason.INSUFFICIENT_SCOPE: pb.REASON_INSUFFICIENT_SCOPE,
    Reason.WRONG_MODE: pb.REASON_WRONG_MODE,
    Reason.EXPIRED: pb.REASON_EXPIRED,
    Reason.IP_NOT_ALLOWED: pb.REASON_IP_NOT_ALLOWED,
}


def mode_from_pb(value: pb.Mode.ValueType, field: str, *, required: bool) -> Mode | None:
    if value == pb.MODE_UNSPECIFIED and not required:
        return None
    mode = _MODES_FROM_PB.get(value)
    if mode is None:
        raise InvalidArgument(f"{field}: must be MODE_LIVE or MODE_TEST, got {value}")
    return mode


def status_from_pb(value: pb.KeyStatus.ValueType) -> KeyStatus | None:
    if value == pb.KEY_STATUS_UNSPECIFIED:
        return None
    status = _STATUSES_FROM_PB.get(value)
    if status is None:
        raise InvalidArgument(
            "status: must be KEY_STATUS_ACTIVE, KEY_STATUS_REVOKED, KEY_STATUS_EXPIRED or"
            f" unset, got {value}"
        )
    return status


def time_from_pb(message: pb.CreateKeyRequest | pb.Key, field: str) -> datetime | None:
    """An optional Timestamp field: None when unset."""
    if not message.HasField(field):  # type: ignore[arg-type]
        return None
    stamp: Timestamp = getattr(message, field)
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as err:
        raise InvalidArgument(f"{field}: not a valid time ({err})") from None


def grace_from_pb(request: pb.RollKeyRequest) -> timedelta:
    if not request.HasField("grace"):
        raise InvalidArgument(
            "grace: required: how long the old key keeps working (0s revokes it at once,"
            " at most 7 days)"
        )
    duration: Duration = request.grace
    try:
        return duration.ToTimedelta()
    except (ValueError, OverflowError) as err:
        raise InvalidArgument(f"grace: not a valid duration ({err})") from None


def update_from_pb(key: pb.Key, mask: FieldMask | None) -> KeyUpdate:
    """The update an UpdateKeyRequest asks for (AIP-134): the fields its mask names; with no
    mask, the updatable fields set in `key`; "*" names every updatable field (unset ones
    cleared, but for scopes, which stay unless given)."""
    if mask is None or not mask.paths:
        fields = {field for field in ("name", "scopes", "allowed_ips") if getattr(key, field)}
        if key.HasField("expire_time"):
            fields.add("expire_time")
        if not fields:
            raise InvalidArgument(
                f"update_mask: nothing to update; set one of {', '.join(UPDATABLE_FIELDS)}"
                " in key and name it in update_mask"
            )
    elif list(mask.paths) == ["*"]:
        # A full replacement, but for scopes: a key cannot be left with none, so unset ones
        # stay as they were.
        fields = {"name", "allowed_ips", "expire_time"} | ({"scopes"} if key.scopes else set())
    else:
        fields = set()
        for path in mask.paths:
            if path not in UPDATABLE_FIELDS:
                raise InvalidArgument(
                    f"update_mask: {path[:64]!r} cannot be updated; updatable fields are"
                    f" {', '.join(UPDATABLE_FIELDS)}"
                )
            fields.add(path)
    return KeyUpdate(
        fields=frozenset(fields),
        name=key.name,
        scopes=tuple(key.scopes),
        allowed_ips=tuple(key.allowed_ips),
        expire_time=time_from_pb(key, "expire_time"),
    )


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def key_to_pb(key: ApiKey, now: datetime) -> pb.Key:
    return pb.Key(
        id=key.id,
        account_id=key.account_id,
        name=key.name,
        prefix=key.prefix,
        mode=_MODES[key.mode],
        scopes=key.scopes,
        created_at=_timestamp(key.created_at),
        last_used_at=_timestamp(key.last_used_at),
        revoked_at=_timestamp(key.revoked_at),
        status=_STATUSES[key.status_at(now)],
        expire_time=_timestamp(key.expire_time),
        allowed_ips=key.allowed_ips,
        revocation_reason=key.revocation_reason or "",
    )


def leaked_key_to_pb(leaked: LeakedKey) -> pb.LeakedKey:
    return pb.LeakedKey(
        prefix=leaked.prefix,
        outcome=_LEAK_OUTCOMES[leaked.outcome],
        key_id=leaked.key_id or "",
        account_id=leaked.account_id or "",
    )


def decision_to_pb(decision: Decision) -> pb.AuthorizeResponse:
    response = pb.AuthorizeResponse(
        allowed=decision.allowed,
        http_status=decision.http_status,
        reason=_REASONS[decision.reason],
        missing_scopes=decision.missing_scopes,
    )
    if decision.grant is not None:
        response.MergeFrom(_grant_part(decision.grant))
    if decision.lease_seconds > 0:
        # Rounded down: a near cache must never hold the grant longer than the replica would.
        response.lease.FromNanoseconds(int(decision.lease_seconds * 1e9))
    return response


# The grant's part of an answer, built once per grant: a hot key's grant answers thousands of
# times a second. Grants are immutable and a changed key gets a new grant object, so the object
# itself is the key (its id, with the grant kept beside the part so that the id stays its own).
_GRANT_PARTS: dict[int, tuple[KeyGrant, pb.AuthorizeResponse]] = {}
_GRANT_PARTS_MAX = 10_000


def _grant_part(grant: KeyGrant) -> pb.AuthorizeResponse:
    found = _GRANT_PARTS.get(id(grant))
    if found is not None and found[0] is grant:
        return found[1]
    part = pb.AuthorizeResponse(
        key_id=grant.key_id,
        account_id=grant.account_id,
        mode=_MODES[grant.mode],
        scopes=sorted(grant.scopes),
        allowed_ips=[str(network) for network in grant.allowed_ips],
    )
    if grant.expire_time is not None:
        part.expire_time.FromDatetime(grant.expire_time)
    if len(_GRANT_PARTS) >= _GRANT_PARTS_MAX:
        _GRANT_PARTS.clear()
    _GRANT_PARTS[id(grant)] = (grant, part)
    return part


def audit_event_to_pb(event: AuditEvent) -> pb.AuditEvent:
    return pb.AuditEvent(
        id=event.id,
        account_id=event.account_id,
        action=_AUDIT_ACTIONS[event.action],
        key_id=event.key_id,
        actor=event.actor,
        peer=event.peer,
        occurred_at=_timestamp(event.occurred_at),
        reason=event.reason,
        related_key_id=event.related_key_id,
        changes=[
            pb.FieldChange(field=c.field, before=c.before, after=c.after) for c in event.changes
        ],
    )
