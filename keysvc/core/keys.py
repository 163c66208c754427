"""The key format: generating raw keys and parsing them back. Pure functions, no I/O.

    ck_live_ 1a2B3c4D5e6F 0123456789abcdefghijABCDEFGHIJ01 2xYz9Q
    └prefix┘ └─ key id ─┘ └──────────── secret ────────────┘ └crc─┘

The body is base62 (URL-safe, double-click selectable): a 12-character public
key id used to look the key up, a 32-character secret (190 random bits), and a
6-character CRC32 over everything before it. The checksum lets a mistyped or
made-up string be refused before the store or the cache is asked anything.
"""

from __future__ import annotations

import re
import secrets
import zlib
from dataclasses import dataclass, field

from keysvc.core.model import Mode

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_ID_LENGTH = 12
SECRET_LENGTH = 32
CHECKSUM_LENGTH = 6
BODY_LENGTH = KEY_ID_LENGTH + SECRET_LENGTH + CHECKSUM_LENGTH
PREFIX_BODY_LENGTH = 6

MODE_PREFIXES = {Mode.LIVE: "ck_live_", Mode.TEST: "ck_test_"}
_MODES_BY_PREFIX = {prefix: mode for mode, prefix in MODE_PREFIXES.items()}
_PREFIX_LENGTH = 8
KEY_LENGTH = _PREFIX_LENGTH + BODY_LENGTH

# For secret scanners: matches every keysvc key and nothing shorter or longer.
SCANNER_REGEX = r"\bck_(?:live|test)_[0-9A-Za-z]{50}\b"

_BODY = re.compile(rf"[0-9A-Za-z]{{{BODY_LENGTH}}}")
_BEARER = "bearer"


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A well-formed raw key; `raw_key` is kept out of repr so it cannot reach a log by accident."""

    mode: Mode
    key_id: str
    raw_key: str = field(repr=False)


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def _checksum(text: str) -> str:
    value = zlib.crc32(text.encode("ascii"))
    digits = []
    for _ in range(CHECKSUM_LENGTH):
        value, digit = divmod(value, len(ALPHABET))
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits))


def new_key_id() -> str:
    return _random_base62(KEY_ID_LENGTH)


def generate(mode: Mode, key_id: str) -> str:
    """A new raw key of `mode` embedding `key_id`, with a fresh secret from `secrets`."""
    unsigned = MODE_PREFIXES[mode] + key_id + _random_base62(SECRET_LENGTH)
    return unsigned + _checksum(unsigned)


def display_prefix(mode: Mode, key_id: str) -> str:
    """What the key list shows to identify a key, e.g. ck_live_abc123."""
    return MODE_PREFIXES[mode] + key_id[:PREFIX_BODY_LENGTH]


def bearer_credential(value: str) -> str | None:
    """The credential of an `Authorization: Bearer <credential>` value ("" when the scheme is
    Bearer with nothing after it); None when the value is not of the Bearer scheme."""
    scheme, _, rest = value.strip().partition(" ")
    return rest.strip() if scheme.lower() == _BEARER else None


def strip_bearer(value: str) -> str:
    """The key from either a raw key or a whole `Authorization: Bearer ...` header value."""
    credential = bearer_credential(value)
    return value.strip() if credential is None else credential


def parse(value: str) -> ParsedKey | None:
    """The key in `value`, or None when it is not a well-formed keysvc key."""
    if len(value) != KEY_LENGTH:
        return None
    mode = _MODES_BY_PREFIX.get(value[:_PREFIX_LENGTH])
    body = value[_PREFIX_LENGTH:]
    if mode is None or not _BODY.fullmatch(body):
        return None
    if not secrets.compare_digest(_checksum(value[:-CHECKSUM_LENGTH]), value[-CHECKSUM_LENGTH:]):
        return None
    return ParsedKey(mode=mode, key_id=body[:KEY_ID_LENGTH], raw_key=value)
