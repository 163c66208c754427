"""Protobuf messages to domain values and back."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp
from keysvc_client.v1 import keysvc_pb2 as pb

from keysvc.core.errors import InvalidArgument
from keysvc.core.model import ApiKey, AuditAction, AuditEvent, Decision, KeyStatus, Mode, Reason

_MODES: dict[Mode, pb.Mode.ValueType] = {Mode.LIVE: pb.MODE_LIVE, Mode.TEST: pb.MODE_TEST}
_MODES_FROM_PB = {value: mode for mode, value in _MODES.items()}
_STATUSES: dict[KeyStatus, pb.KeyStatus.ValueType] = {
    KeyStatus.ACTIVE: pb.KEY_STATUS_ACTIVE,
    KeyStatus.REVOKED: pb.KEY_STATUS_REVOKED,
}
_STATUSES_FROM_PB = {value: status for status, value in _STATUSES.items()}
_AUDIT_ACTIONS = {
    AuditAction.KEY_CREATED: pb.AUDIT_ACTION_KEY_CREATED,
    AuditAction.KEY_REVOKED: pb.AUDIT_ACTION_KEY_REVOKED,
}
_REASONS = {
    Reason.ALLOWED: pb.REASON_ALLOWED,
    Reason.MISSING: pb.REASON_MISSING,
    Reason.MALFORMED: pb.REASON_MALFORMED,
    Reason.NOT_FOUND: pb.REASON_NOT_FOUND,
    Reason.REVOKED: pb.REASON_REVOKED,
    Reason.INSUFFICIENT_SCOPE: pb.REASON_INSUFFICIENT_SCOPE,
    Reason.WRONG_MODE: pb.REASON_WRONG_MODE,
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
            f"status: must be KEY_STATUS_ACTIVE, KEY_STATUS_REVOKED or unset, got {value}"
        )
    return status


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def key_to_pb(key: ApiKey) -> pb.Key:
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
        status=_STATUSES[key.status],
    )


def decision_to_pb(decision: Decision) -> pb.AuthorizeResponse:
    response = pb.AuthorizeResponse(
        allowed=decision.allowed,
        http_status=decision.http_status,
        reason=_REASONS[decision.reason],
        missing_scopes=decision.missing_scopes,
    )
    grant = decision.grant
    if grant is not None:
        response.key_id = grant.key_id
        response.account_id = grant.account_id
        response.mode = _MODES[grant.mode]
        response.scopes.extend(sorted(grant.scopes))
    return response


def audit_event_to_pb(event: AuditEvent) -> pb.AuditEvent:
    return pb.AuditEvent(
        id=event.id,
        account_id=event.account_id,
        action=_AUDIT_ACTIONS[event.action],
        key_id=event.key_id,
        actor=event.actor,
        peer=event.peer,
        occurred_at=_timestamp(event.occurred_at),
    )
