"""Page tokens for ListKeys: an opaque, URL-safe encoding of the last key on the page."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime

from keysvc.errors import InvalidArgument
from keysvc.model import ApiKey
from keysvc.store import Cursor

_MAX_TOKEN_LENGTH = 256


def encode(last: ApiKey) -> str:
    payload = json.dumps({"t": last.created_at.isoformat(), "i": last.id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode(token: str) -> Cursor | None:
    if not token:
        return None
    try:
        # Ours are under 100 characters; a longer one could only be crafted (deep JSON).
        if len(token) > _MAX_TOKEN_LENGTH:
            raise ValueError("too long")
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        created_at = datetime.fromisoformat(payload["t"])
        key_id = payload["i"]
        if created_at.tzinfo is None or not isinstance(key_id, str):
            raise ValueError("incomplete cursor")
        created_at = created_at.astimezone(UTC)
    except (
        ValueError,
        KeyError,
        TypeError,
        UnicodeError,
        binascii.Error,
        OverflowError,
        RecursionError,
    ) as err:
        raise InvalidArgument(
            "page_token: not a token from ListKeys; pass next_page_token unchanged"
        ) from err
    return Cursor(created_at=created_at, key_id=key_id)
