"""The domain's values: keys as the product shows them, authorization decisions, and the
audit trail of who changed which key."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from keysvc.core import networks
from keysvc.core.networks import Network


class Mode(enum.Enum):
    LIVE = "live"
    TEST = "test"


class KeyStatus(enum.Enum):
    ACTIVE = "active"
    REVOKED = "revoked"
    # Past its expire_time: like a revoked key, it never works again.
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as the key list shows it: everything but the secret."""

    id: str
    account_id: str
    name: str
    prefix: str
    mode: Mode
    scopes: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    # None: never expires.
    expire_time: datetime | None = None
    # Normalized addresses and CIDR ranges (keysvc.core.networks); empty: any address.
    allowed_ips: tuple[str, ...] = ()
    # Why it was revoked, if a reason was given.
    revocation_reason: str | None = None

    def status_at(self, now: datetime) -> KeyStatus:
        if self.revoked_at is not None:
            return KeyStatus.REVOKED
        if self.expire_time is not None and self.expire_time <= now:
            return KeyStatus.EXPIRED
        return KeyStatus.ACTIVE


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A new key and its raw key, which exists only in this value and the response."""

    key: ApiKey
    raw_key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class RolledKey:
    """The new key of a roll with its raw key, and the old key as the roll left it."""

    key: ApiKey
    raw_key: str = field(repr=False)
    rolled: ApiKey


# The fields UpdateKey may change, by their names in the contract.
UPDATABLE_FIELDS = ("name", "scopes", "allowed_ips", "expire_time")


@dataclass(frozen=True, slots=True)
class KeyUpdate:
    """Which of a key's fields to change (`fields`, a subset of UPDATABLE_FIELDS), and
    their new values; the values of fields not named are ignored."""

    fields: frozenset[str]
    name: str = ""
    scopes: tuple[str, ...] = ()
    allowed_ips: tuple[str, ...] = ()
    expire_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field an update changed, as text for the audit trail (never a secret)."""

    field: str
    before: str
    after: str


class LeakOutcome(enum.Enum):
    # A real key, active until now: revoked.
    REVOKED = "revoked"
    # A real key, revoked or expired before.
    ALREADY_REVOKED = "already_revoked"
    # Not a keysvc key, or no key with that id and secret.
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True)
class LeakedKey:
    """What RevokeLeakedKeys did with one raw key; never holds the raw key itself."""

    prefix: str
    outcome: LeakOutcome
    key_id: str | None = None
    account_id: str | None = None


@dataclass(frozen=True, slots=True)
class KeyPage:
    keys: list[ApiKey]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class Cursor:
    """Position in a newest-first list: the time and id of the last item already returned
    (a key's created_at and id, or an audit event's occurred_at and id)."""

    at: datetime
    id: str


class AuditAction(enum.Enum):
    KEY_CREATED = "key_created"
    KEY_REVOKED = "key_revoked"
    KEY_ROLLED = "key_rolled"
    KEY_UPDATED = "key_updated"
    KEY_LEAK_REVOKED = "key_leak_revoked"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks for a change and from where: a caller's name and its network peer."""

    name: str
    peer: str


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One entry of an account's audit trail: a key created, rolled, updated or revoked, by
    whom, when; `reason` is a revocation's reason or where a leaked key was found,
    `related_key_id` a roll's new key, `changes` what an update changed."""

    id: str
    account_id: str
    action: AuditAction
    key_id: str
    actor: str
    peer: str
    occurred_at: datetime
    reason: str = ""
    related_key_id: str = ""
    changes: tuple[FieldChange, ...] = ()


@dataclass(frozen=True, slots=True)
class AuditPage:
    events: list[AuditEvent]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """What Authorize needs to know about a verified key; this is what the caches hold.

    `digest` is the SHA-256 of the raw key, proven by argon2 against the stored verifier
    and compared in constant time on the hot path. A key's secret never changes, so the
    digest stays proof of the secret for good; a grant without one (a revocation marker)
    refuses the key but proves no secret. `seq` is the position in the change log
    (keysvc.usecases.change_log) the grant's state was read at: a change of the key logged after
    `seq` makes the grant stale. `expire_time` and `allowed_ips` travel with the grant, so
    that expiry and address checks need no store read.
    """

    key_id: str
    account_id: str
    mode: Mode
    scopes: frozenset[str]
    revoked: bool
    seq: int = 0
    digest: bytes | None = field(default=None, repr=False)
    expire_time: datetime | None = None
    allowed_ips: tuple[Network, ...] = ()

    @classmethod
    def of(cls, key: ApiKey, *, seq: int, digest: bytes | None = None) -> KeyGrant:
        """The grant of `key` as stored at change-log position `seq`."""
        return cls(
            key_id=key.id,
            account_id=key.account_id,
            mode=key.mode,
            scopes=frozenset(key.scopes),
            revoked=key.revoked_at is not None,
            seq=seq,
            digest=digest,
            expire_time=key.expire_time,
            allowed_ips=networks.parsed(key.allowed_ips),
        )


class ChangeKind(enum.Enum):
    CREATED = "created"
    REVOKED = "revoked"
    # Anything else about the key changed (an update, a roll's new expiry): grants read
    # before it are stale, whether the change narrowed the key or widened it.
    UPDATED = "updated"


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change log: what happened to a key, at which position."""

    seq: int
    key_id: str
    kind: ChangeKind


class Reason(enum.Enum):
    ALLOWED = "allowed"
    MISSING = "missing"
    MALFORMED = "malformed"
    NOT_FOUND = "not_found"
    REVOKED = "revoked"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    WRONG_MODE = "wrong_mode"
    EXPIRED = "expired"
    IP_NOT_ALLOWED = "ip_not_allowed"


_HTTP_STATUS = {
    Reason.ALLOWED: 200,
    Reason.INSUFFICIENT_SCOPE: 403,
    Reason.WRONG_MODE: 403,
    Reason.IP_NOT_ALLOWED: 403,
}


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one Authorize call. `grant` is set whenever the key was verified.

    `lease_seconds`, set when the key is active, is how long from now the grant may go on
    deciding the key's requests in a cache further out (an API server's Guard)."""

    reason: Reason
    grant: KeyGrant | None = None
    missing_scopes: tuple[str, ...] = ()
    lease_seconds: float = 0.0

    @property
    def allowed(self) -> bool:
        return self.reason is Reason.ALLOWED

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS.get(self.reason, 401)
