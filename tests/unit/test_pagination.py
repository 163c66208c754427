"""Page tokens of ListKeys and ListAuditEvents: opaque, URL-safe, and refused by any list
but the one that made them."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from keysvc.core import pagination
from keysvc.core.errors import InvalidArgument
from keysvc.core.model import Cursor

KEYS, AUDIT_EVENTS = pagination.KEYS, pagination.AUDIT_EVENTS


def _token(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


class TestRoundTrip:
    @pytest.mark.parametrize("listing", [KEYS, AUDIT_EVENTS])
    def test_decodes_to_the_position_it_was_made_from(self, listing: str) -> None:
        """A token decodes, in its own list, to the time and id of the last item on the page."""
        position = Cursor(at=datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC), id="a1B2c3D4e5F6")
        assert pagination.decode(pagination.encode(position, listing), listing) == position

    def test_keeps_the_instant_across_time_zones(self) -> None:
        """A time in another zone decodes to the same instant."""
        at = datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
        cursor = pagination.decode(pagination.encode(Cursor(at, "a1B2c3D4e5F6"), KEYS), KEYS)
        assert cursor is not None
        assert cursor.at == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def test_is_url_safe(self) -> None:
        """A token needs no escaping in a URL: letters, digits, '-' and '_' only."""
        position = Cursor(datetime(2026, 3, 1, tzinfo=UTC), "zzzzzzzzzzz?")
        for listing in (KEYS, AUDIT_EVENTS):
            assert re.fullmatch(r"[A-Za-z0-9_-]+", pagination.encode(position, listing))

    def test_empty_means_the_first_page(self) -> None:
        """No token means start from the newest item."""
        assert pagination.decode("", KEYS) is None
        assert pagination.decode("", AUDIT_EVENTS) is None

    def test_a_token_without_a_list_name_is_a_list_keys_token(self) -> None:
        """Tokens made before ListAuditEvents existed name no list, and still page ListKeys."""
        token = _token({"t": "2026-03-01T12:00:00+00:00", "i": "a1B2c3D4e5F6"})
        assert pagination.decode(token, KEYS) == Cursor(
            datetime(2026, 3, 1, 12, 0, tzinfo=UTC), "a1B2c3D4e5F6"
        )


class TestAnotherListsToken:
    @pytest.mark.parametrize(("made_by", "given_to"), [(KEYS, AUDIT_EVENTS), (AUDIT_EVENTS, KEYS)])
    def test_is_refused(self, made_by: str, given_to: str) -> None:
        """A token of one list is refused by the other, naming the list it should come from."""
        token = pagination.encode(Cursor(datetime(2026, 3, 1, tzinfo=UTC), "a1B2c3D4e5F6"), made_by)
        with pytest.raises(InvalidArgument, match=f"^page_token: not a token from {given_to};"):
            pagination.decode(token, given_to)

    def test_an_old_token_is_refused_by_list_audit_events(self) -> None:
        """A token naming no list is a ListKeys token, which ListAuditEvents refuses."""
        token = _token({"t": "2026-03-01T12:00:00+00:00", "i": "a1B2c3D4e5F6"})
        with pytest.raises(InvalidArgument, match=r"^page_token: "):
            pagination.decode(token, AUDIT_EVENTS)


class TestGarbage:
    @pytest.mark.parametrize(
        "token",
        [
            "not a token",
            "!!!!",
            "a",
            "é",
            base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),
            _token("just a string"),
            _token([1, 2, 3]),
            _token(42),
            _token({"t": "2026-03-01T12:00:00+00:00"}),
            _token({"i": "a1B2c3D4e5F6"}),
            _token({"t": "yesterday", "i": "a1B2c3D4e5F6"}),
            _token({"t": 1767225600, "i": "a1B2c3D4e5F6"}),
            _token({"t": "2026-03-01T12:00:00", "i": "a1B2c3D4e5F6"}),
            _token({"t": "2026-03-01T12:00:00+00:00", "i": 7}),
            _token({"l": 7, "t": "2026-03-01T12:00:00+00:00", "i": "a1B2c3D4e5F6"}),
            "A" * 300,
        ],
    )
    @pytest.mark.parametrize("listing", [KEYS, AUDIT_EVENTS])
    def test_refuses_tokens_not_made_by_the_list(self, token: str, listing: str) -> None:
        """Anything but a token from the list is refused with advice to pass it unchanged."""
        with pytest.raises(InvalidArgument, match=r"^page_token: .*pass next_page_token unchanged"):
            pagination.decode(token, listing)
