"""Checks on what admin callers send; each failure says which field is wrong and how."""

from __future__ import annotations

import re
import unicodedata

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
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") for c in value):
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
