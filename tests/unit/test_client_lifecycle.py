"""The Python client's and the CLI's side of the key lifecycle, where no server is needed: the
requests the clients build, the arguments they refuse before calling, and how the `keysvc`
command reads durations, times and addresses."""

from __future__ import annotations

import asyncio
import inspect
from datetime import UTC, datetime, timedelta, timezone

import grpc
import pytest
from keysvc_client import KeyServiceClient, KeysvcError, _common
from keysvc_client import aio as keysvc_aio
from keysvc_client.cli import build_parser, main
from keysvc_client.cli.when import parse_duration, parse_expiry
from keysvc_client.v1 import keysvc_pb2

pb = keysvc_pb2
NOW = datetime(2026, 12, 2, 2, 0, tzinfo=UTC)
# Nothing listens on port 1: a request that were sent would fail UNAVAILABLE, not ValueError.
NOWHERE = "127.0.0.1:1"
RAW_KEY = "ck_live_" + "A" * 50


def update(**fields: object) -> pb.UpdateKeyRequest:
    arguments: dict[str, object] = {
        "name": None,
        "scopes": None,
        "allowed_ips": None,
        "expire_time": _common.UNSET,
        **fields,
    }
    return _common.update_key_request("acct_1", "AbCdEf123456", **arguments)  # type: ignore[arg-type]


class TestCreateKeyRequest:
    def test_carries_the_expiry_as_the_same_instant_and_the_addresses(self) -> None:
        """An aware expire_time in any zone is sent as that instant; allowed_ips as given."""
        paris = timezone(timedelta(hours=1))
        request = _common.create_key_request(
            "acct_1",
            "n",
            "live",
            ["links:read"],
            expire_time=datetime(2027, 1, 1, 1, 0, tzinfo=paris),
            allowed_ips=("203.0.113.7", "2001:db8::/32"),
        )

        assert request.expire_time.ToDatetime(tzinfo=UTC) == datetime(2027, 1, 1, tzinfo=UTC)
        assert list(request.allowed_ips) == ["203.0.113.7", "2001:db8::/32"]

    def test_without_them_the_key_never_expires_and_works_from_anywhere(self) -> None:
        """Leaving both out sends no expire_time and no allowed_ips."""
        request = _common.create_key_request("acct_1", "n", "test", ["links:read"])

        assert not request.HasField("expire_time")
        assert list(request.allowed_ips) == []

    def test_a_naive_expiry_is_refused_naming_the_argument(self) -> None:
        """A datetime without a time zone would be a guess: ValueError naming expire_time."""
        with pytest.raises(ValueError, match=r"^expire_time must be timezone-aware"):
            _common.create_key_request(
                "acct_1", "n", "live", ["links:read"], expire_time=datetime(2027, 1, 1)
            )

    def test_a_single_string_of_addresses_is_refused(self) -> None:
        """allowed_ips="10.0.0.0/8" would become one address per character: TypeError."""
        with pytest.raises(TypeError, match=r"^allowed_ips must be an iterable"):
            _common.create_key_request(
                "acct_1", "n", "live", ["links:read"], allowed_ips="10.0.0.0/8"
            )


class TestUpdateKeyRequest:
    def test_the_mask_names_exactly_the_fields_given(self) -> None:
        """Only the fields passed are in update_mask; the key carries account and id."""
        request = update(name="Renamed", scopes=["links:read"])

        assert list(request.update_mask.paths) == ["name", "scopes"]
        assert (request.key.account_id, request.key.id) == ("acct_1", "AbCdEf123456")
        assert request.key.name == "Renamed"
        assert list(request.key.scopes) == ["links:read"]

    def test_every_field_at_once(self) -> None:
        """All four fields given: all four in the mask, in the contract's order."""
        request = update(
            name="n", scopes=["links:read"], allowed_ips=["10.0.0.0/8"], expire_time=NOW
        )

        assert list(request.update_mask.paths) == ["name", "scopes", "allowed_ips", "expire_time"]
        assert request.key.expire_time.ToDatetime(tzinfo=UTC) == NOW

    def test_expire_time_none_clears_the_expiry(self) -> None:
        """expire_time=None is in the mask with no value: the key never expires."""
        request = update(expire_time=None)

        assert list(request.update_mask.paths) == ["expire_time"]
        assert not request.key.HasField("expire_time")

    def test_an_empty_address_list_clears_the_restriction(self) -> None:
        """allowed_ips=[] is in the mask with no addresses: any address again."""
        request = update(allowed_ips=[])

        assert list(request.update_mask.paths) == ["allowed_ips"]
        assert list(request.key.allowed_ips) == []

    def test_nothing_to_change_is_refused(self) -> None:
        """An update naming no field is a ValueError listing the fields, not an empty call."""
        with pytest.raises(ValueError, match="name, scopes, allowed_ips or expire_time"):
            update()

    def test_a_naive_expiry_is_refused_naming_the_argument(self) -> None:
        """A naive expire_time is a ValueError naming expire_time."""
        with pytest.raises(ValueError, match=r"^expire_time must be timezone-aware"):
            update(expire_time=datetime(2027, 1, 1))


class TestOtherRequests:
    def test_roll_sends_the_grace_as_a_duration(self) -> None:
        """grace=timedelta(hours=24) is sent as 86400 s; 0 as a zero duration."""
        day = _common.roll_key_request("acct_1", "AbCdEf123456", timedelta(hours=24))
        zero = _common.roll_key_request("acct_1", "AbCdEf123456", timedelta(0))

        assert day.grace.ToTimedelta() == timedelta(hours=24)
        assert (day.account_id, day.id) == ("acct_1", "AbCdEf123456")
        assert zero.HasField("grace")
        assert zero.grace.ToTimedelta() == timedelta(0)

    def test_roll_refuses_a_grace_that_is_not_a_timedelta(self) -> None:
        """A number of what? grace=24 is a TypeError naming grace."""
        with pytest.raises(TypeError, match=r"^grace must be a timedelta"):
            _common.roll_key_request("acct_1", "AbCdEf123456", 24)  # type: ignore[arg-type]

    def test_revoke_carries_the_reason(self) -> None:
        """revoke_key's reason goes into RevokeKeyRequest.reason."""
        request = _common.revoke_key_request("acct_1", "AbCdEf123456", "compromised")

        assert request.reason == "compromised"

    def test_revoke_leaked_keys_carries_the_keys_and_the_source(self) -> None:
        """Keys in order, and the source."""
        request = _common.revoke_leaked_keys_request(
            iter([RAW_KEY, "garbage"]), "https://example.com"
        )

        assert list(request.keys) == [RAW_KEY, "garbage"]
        assert request.source == "https://example.com"

    def test_revoke_leaked_keys_refuses_a_single_string(self) -> None:
        """One raw key passed as a string would be fifty-eight one-letter keys: TypeError."""
        with pytest.raises(TypeError, match=r"^keys must be an iterable"):
            _common.revoke_leaked_keys_request(RAW_KEY, "")

    def test_authorize_carries_the_client_address(self) -> None:
        """client_ip goes into AuthorizeRequest.client_ip."""
        request = _common.authorize_request(RAW_KEY, ["links:read"], None, "2001:db8::1")

        assert request.client_ip == "2001:db8::1"

    def test_expired_is_a_status_filter(self) -> None:
        """list_keys(status="expired") filters on KEY_STATUS_EXPIRED."""
        request = _common.list_keys_request(
            "acct_1", page_size=0, page_token="", mode=None, status="expired"
        )

        assert request.status == pb.KEY_STATUS_EXPIRED


class TestScrubSecrets:
    def test_every_key_sent_is_cut_out_of_an_error(self) -> None:
        """An error quoting any of the keys of a RevokeLeakedKeys call shows none of them."""
        other = "ck_test_" + "B" * 50
        error = KeysvcError(grpc.StatusCode.INTERNAL, f"bad {RAW_KEY} and Bearer {other}")

        scrubbed = _common.scrub_secrets(error, [RAW_KEY, f"Bearer {other}"])

        assert scrubbed is not None
        assert scrubbed.details == "bad [redacted] and [redacted]"


class TestBothClientsAlike:
    @pytest.mark.parametrize(
        "method", ["create_key", "revoke_key", "roll_key", "update_key", "revoke_leaked_keys",
                   "authorize"],
    )  # fmt: skip
    def test_same_signature(self, method: str) -> None:
        """The blocking and the asyncio client take the same arguments, with the same defaults."""
        blocking = inspect.signature(getattr(KeyServiceClient, method))
        asynchronous = inspect.signature(getattr(keysvc_aio.KeyServiceClient, method))

        assert blocking.parameters == asynchronous.parameters

    def test_a_naive_expiry_never_reaches_the_network(self) -> None:
        """Both clients refuse a naive expire_time with ValueError before calling (nothing
        listens at the target, so a call would have failed UNAVAILABLE instead)."""
        naive = datetime(2027, 1, 1)
        with (
            KeyServiceClient(NOWHERE, admin_token="t", timeout=1) as client,
            pytest.raises(ValueError, match="expire_time"),
        ):
            client.create_key("acct_1", "n", "live", ["links:read"], expire_time=naive)

        async def scenario() -> None:
            async with keysvc_aio.KeyServiceClient(NOWHERE, admin_token="t", timeout=1) as client:
                await client.update_key("acct_1", "AbCdEf123456", expire_time=naive)

        with pytest.raises(ValueError, match="expire_time"):
            asyncio.run(scenario())


class TestDurations:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("30d", timedelta(days=30)),
            ("12h", timedelta(hours=12)),
            ("90m", timedelta(minutes=90)),
            ("45s", timedelta(seconds=45)),
            ("2w", timedelta(weeks=2)),
            ("1h30m", timedelta(hours=1, minutes=30)),
            ("0", timedelta(0)),
            ("0s", timedelta(0)),
            (" 24H ", timedelta(hours=24)),
        ],
    )
    def test_reads(self, text: str, expected: timedelta) -> None:
        """Units w, d, h, m, s, combined, in any case; 0 alone is zero."""
        assert parse_duration(text) == expected

    @pytest.mark.parametrize("text", ["", "24", "1.5h", "-1h", "h", "1y", "1 h", "tomorrow"])
    def test_refuses(self, text: str) -> None:
        """Anything else is a ValueError with examples; a bare number is ambiguous."""
        with pytest.raises(ValueError, match="30d, 12h, 90m"):
            parse_duration(text)


class TestExpiry:
    def test_a_duration_counts_from_now(self) -> None:
        """30d is thirty days after now."""
        assert parse_expiry("30d", NOW) == NOW + timedelta(days=30)

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2027-01-01T00:00:00Z", datetime(2027, 1, 1, tzinfo=UTC)),
            ("2027-01-01T01:00:00+01:00", datetime(2027, 1, 1, tzinfo=UTC)),
            ("2027-01-01T00:00:00.5Z", datetime(2027, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)),
        ],
    )
    def test_an_rfc_3339_time(self, text: str, expected: datetime) -> None:
        """An RFC 3339 time is that instant, whatever its offset."""
        assert parse_expiry(text, NOW) == expected

    def test_a_time_without_a_zone_is_refused(self) -> None:
        """2027-01-01T00:00:00 could be any of 26 instants: refused, saying to add a zone."""
        with pytest.raises(ValueError, match="no time zone: add Z"):
            parse_expiry("2027-01-01T00:00:00", NOW)

    def test_zero_is_refused(self) -> None:
        """A key expiring now is no key: 0 is refused."""
        with pytest.raises(ValueError, match="more than 0"):
            parse_expiry("0d", NOW)

    def test_an_enormous_duration_is_refused(self) -> None:
        """A duration past the year 9999 is a ValueError, not an OverflowError."""
        with pytest.raises(ValueError):
            parse_expiry("99999999d", NOW)


class TestCommandLine:
    """What the `keysvc` command refuses before calling any server (exit 2, one clear line)."""

    @pytest.mark.parametrize(
        ("args", "flag", "detail"),
        [
            (["keys", "create", "--account", "a", "--name", "n", "--mode", "live",
              "--scope", "links:read", "--expires", "tomorrow"], "--expires", "RFC 3339"),
            (["keys", "create", "--account", "a", "--name", "n", "--mode", "live",
              "--scope", "links:read", "--expires", "2027-01-01T00:00:00"], "--expires",
             "no time zone"),
            (["keys", "create", "--account", "a", "--name", "n", "--mode", "live",
              "--scope", "links:read", "--allow-ip", "10.0.0.300"], "--allow-ip",
             "IP address or CIDR range"),
            (["keys", "roll", "--account", "a", "AbCdEf123456", "--grace", "1 day"], "--grace",
             "30d, 12h"),
            (["keys", "roll", "--account", "a", "AbCdEf123456"], "--grace", "required"),
            (["keys", "update", "--account", "a", "AbCdEf123456", "--allow-ip", "10.0.0.0/8",
              "--any-ip"], "--any-ip", "not allowed with argument --allow-ip"),
            (["keys", "update", "--account", "a", "AbCdEf123456", "--expires", "30d",
              "--never-expires"], "--never-expires", "not allowed with argument --expires"),
        ],
        ids=["expires-word", "expires-naive", "allow-ip-bad", "grace-bad", "grace-missing",
             "any-ip-and-allow-ip", "never-and-expires"],
    )  # fmt: skip
    def test_bad_arguments_name_the_flag(
        self, capsys: pytest.CaptureFixture[str], args: list[str], flag: str, detail: str
    ) -> None:
        """A bad value or a contradiction is refused with exit 2 and a message naming the flag."""
        with pytest.raises(SystemExit) as exited:
            main([*args, "--target", NOWHERE])

        assert exited.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert flag in error, error
        assert detail in error, error

    def test_an_update_without_changes_is_refused(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`keys update ID` with no change says which flags exist, and calls nothing."""
        args = build_parser().parse_args(
            ["keys", "update", "--account", "a", "AbCdEf123456", "--target", NOWHERE,
             "--timeout", "1"]
        )  # fmt: skip

        status = args.run(args)

        assert status == 2
        error = capsys.readouterr().err
        assert error.startswith("keysvc: keys update: nothing to change: give --name, --scope")
        assert "UNAVAILABLE" not in error
