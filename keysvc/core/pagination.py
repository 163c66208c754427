"""Page tokens for the newest-first lists (ListKeys, ListAuditEvents): an opaque, URL-safe
encoding of the position of the last item on the page, naming the list it belongs to."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from keysvc.core.errors import InvalidArgument
from keysvc.core.model import Cursor

T = TypeVar("T")

KEYS = "ListKeys"
AUDIT_EVENTS = "ListAuditEvents"

_MAX_TOKEN_LENGTH = 256


def encode(position: Cursor, listing: str) -> str:
    payload = json.dumps(
        {"l": listing, "t": position.at.isoformat(), "i": position.id}, separators=(",", ":")
    )
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode(token: str, listing: str) -> Cursor | None:
    """The position `token` names in `listing`; InvalidArgument if it is not one of its tokens."""
    if not token:
        return None
    try:
        # Ours are around 100 characters; a longer one could only be crafted (deep JSON).
        if len(token) > _MAX_TOKEN_LENGTH:
            raise ValueError("too long")
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if not isinstance(payload, dict):
            raise ValueError("not a cursor")
        # Tokens made before there was more than one list name none: they are ListKeys'.
        if payload.get("l", KEYS) != listing:
            raise ValueError("another list's token")
        at = datetime.fromisoformat(payload["t"])
        item_id = payload["i"]
        if at.tzinfo is None or not isinstance(item_id, str):
            raise ValueError("incomplete cursor")
        at = at.astimezone(UTC)
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
            f"page_token: not a token from {listing}; pass next_page_token unchanged"
        ) from err
    return Cursor(at=at, id=item_id)


def page_of(
    rows: Sequence[T], limit: int, listing: str, position: Callable[[T], Cursor]
) -> tuple[list[T], str]:
    """The first `limit` of `rows` (read with one extra, which tells whether another page
    follows) and the token of the next page: "" on the last one."""
    page = list(rows[:limit])
    if len(rows) <= limit:
        return page, ""
    return page, encode(position(page[-1]), listing)
