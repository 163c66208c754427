"""Checks on what admin callers send; each failure says which field is wrong and how."""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime, timedelta

from keysvc.core import keys
from keysvc.core.errors import InvalidArgument

ACCOUNT_ID_MAX = 64
NAME_MAX = 100
PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 500

_ACCOUNT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_KEY_ID = re.compile(rf"[0-9A-Za-z]{{{keys.KEY_ID_LENGTH}}}")


def account_id(value: str) -> str:
    if not value:
        raise InvalidArgument("account_id: required")
    if len(value) > ACCOUNT_ID_MAX or not _ACCOUNT_ID.fullmatch(value):
        raise InvalidArgument(
            f"account_id: must be 1 to {ACCOUNT_ID_MAX} letters, digits, '_', '-', '.' or ':',"
            " starting with a letter or digit"
        )
    return value


def name(value: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument("name: required, e.g. 'Production server'")
    if len(value) > NAME_MAX:
        raise InvalidArgument(f"name: at most {NAME_MAX} characters, got {len(value)}")
    if _has_invisible(value):
        raise InvalidArgument("name: must not contain control or invisible characters")
    return value


def key_id(value: str) -> str:
    if not value:
        raise InvalidArgument("id: required")
    if not _KEY_ID.fullmatch(value):
        raise InvalidArgument(
            f"id: not a key id (expected {keys.KEY_ID_LENGTH} letters and digits)"
        )
    return value


def page_size(value: int) -> int:
    if value < 0:
        raise InvalidArgument(f"page_size: must not be negative, got {value}")
    if value > PAGE_SIZE_MAX:
        raise InvalidArgument(f"page_size: at most {PAGE_SIZE_MAX}, got {value}")
    return value or PAGE_SIZE_DEFAULT


REASON_MAX = 200
SOURCE_MAX = 2000
MAX_GRACE = timedelta(days=7)
MAX_LEAKED_KEYS = 100


def reason(value: str) -> str:
    """A revocation's reason: free text, e.g. "compromised"; empty when none is given."""
    value = value.strip()
    if len(value) > REASON_MAX:
        raise InvalidArgument(f"reason: at most {REASON_MAX} characters, got {len(value)}")
    if _has_invisible(value):
        raise InvalidArgument("reason: must not contain control or invisible characters")
    return value


def source(value: str) -> str:
    """Where leaked keys were found: a URL or a description."""
    value = value.strip()
    if len(value) > SOURCE_MAX:
        raise InvalidArgument(f"source: at most {SOURCE_MAX} characters, got {len(value)}")
    if _has_invisible(value):
        raise InvalidArgument("source: must not contain control or invisible characters")
    return value


def _has_invisible(value: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") for c in value)


def expire_time(value: datetime | None, now: datetime) -> datetime | None:
    """A key's expire_time: in the future, or None for never."""
    if value is not None and value <= now:
        raise InvalidArgument(
            f"expire_time: must be in the future, got {value.isoformat()}"
            f" (now is {now.isoformat()})"
        )
    return value


def grace(value: timedelta) -> timedelta:
    """How long a rolled key keeps working: 0 (revoke at once) up to MAX_GRACE."""
    if value < timedelta(0):
        raise InvalidArgument(f"grace: must not be negative, got {value.total_seconds():g}s")
    if value > MAX_GRACE:
        raise InvalidArgument(
            f"grace: at most {MAX_GRACE.days} days, got {value.total_seconds():g}s"
        )
    return value


def leaked_keys(values: list[str]) -> list[str]:
    if not values:
        raise InvalidArgument("keys: required, the raw keys that leaked")
    if len(values) > MAX_LEAKED_KEYS:
        raise InvalidArgument(f"keys: at most {MAX_LEAKED_KEYS} per call, got {len(values)}")
    return values
