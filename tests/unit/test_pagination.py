"""ListKeys page tokens: opaque, URL-safe, and refused when they were not made by ListKeys."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from keysvc import pagination
from keysvc.errors import InvalidArgument
from keysvc.model import ApiKey, Mode
from keysvc.store import Cursor


def _api_key(created_at: datetime, key_id: str = "a1B2c3D4e5F6") -> ApiKey:
    return ApiKey(
        id=key_id,
        account_id="acct_1",
        name="Production server",
        prefix="ck_live_a1B2c3",
        mode=Mode.LIVE,
        scopes=("links:read",),
        created_at=created_at,
    )


def _token(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


class TestRoundTrip:
    def test_decodes_to_the_position_of_the_last_key(self) -> None:
        """A token decodes to the created_at and id of the key it was made from."""
        created_at = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
        token = pagination.encode(_api_key(created_at))
        assert pagination.decode(token) == Cursor(created_at=created_at, key_id="a1B2c3D4e5F6")

    def test_keeps_the_instant_across_time_zones(self) -> None:
        """A key timestamped in another zone decodes to the same instant."""
        created_at = datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
        cursor = pagination.decode(pagination.encode(_api_key(created_at)))
        assert cursor is not None
        assert cursor.created_at == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def test_is_url_safe(self) -> None:
        """A token needs no escaping in a URL: letters, digits, '-' and '_' only."""
        token = pagination.encode(_api_key(datetime(2026, 3, 1, tzinfo=UTC), "zzzzzzzzzzz?"))
        assert re.fullmatch(r"[A-Za-z0-9_-]+", token)

    def test_empty_means_the_first_page(self) -> None:
        """No token means start from the newest key."""
        assert pagination.decode("") is None


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
        ],
    )
    def test_refuses_tokens_not_made_by_list_keys(self, token: str) -> None:
        """Anything but a token from ListKeys is refused with advice to pass it unchanged."""
        with pytest.raises(InvalidArgument, match=r"^page_token: .*pass next_page_token unchanged"):
            pagination.decode(token)
