"""Times and durations as an operator types them: `30d`, `12h`, `90m`, `1h30m`, or an RFC 3339
time such as `2027-01-01T00:00:00Z`.

Pure functions: `now` is passed in, so a time is computed once, when the command line is read.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

__all__ = ["DURATION_EXAMPLES", "TIME_EXAMPLE", "parse_duration", "parse_expiry"]

DURATION_EXAMPLES = "30d, 12h, 90m or 1h30m"
TIME_EXAMPLE = "2027-01-01T00:00:00Z"

_UNITS = {
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
}
_PART = re.compile(r"(\d+)([wdhms])")
_DURATION = re.compile(r"(?:\d+[wdhms])+")


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `45s`, `2w`, or several together (`1h30m`); `0` alone is zero.

    ValueError, with the examples, for anything else: a bare number would be ambiguous.
    """
    value = text.strip().lower()
    if value == "0":
        return timedelta(0)
    if not _DURATION.fullmatch(value):
        raise ValueError(f"expected a duration such as {DURATION_EXAMPLES}, got {text!r}")
    total = timedelta(0)
    for amount, unit in _PART.findall(value):
        try:
            total += int(amount) * _UNITS[unit]
        except OverflowError:
            raise ValueError(f"duration {text!r} is too long") from None
    return total


def parse_expiry(text: str, now: datetime) -> datetime:
    """When a key should stop working: a duration from `now` (more than 0), or an RFC 3339
    time with its time zone (`Z` or an offset). Whether it is in the future is the server's
    to say, by its clock."""
    try:
        duration = parse_duration(text)
    except ValueError:
        pass
    else:
        if duration <= timedelta(0):
            raise ValueError(f"a duration from now must be more than 0, got {text!r}")
        try:
            return now + duration
        except OverflowError:
            raise ValueError(f"{text!r} from now is past the year 9999") from None
    try:
        # Python 3.11 reads RFC 3339 as written, "Z" included.
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"expected a duration from now ({DURATION_EXAMPLES}) or an RFC 3339 time"
            f" ({TIME_EXAMPLE}), got {text!r}"
        ) from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(
            f"{text!r} has no time zone: add Z for UTC or an offset such as +01:00 ({TIME_EXAMPLE})"
        )
    return when
