"""The key lifecycle as an operator drives it with grpcurl, in proto3 JSON, on both backends:
CreateKey's expire_time and allowed_ips, RollKey, UpdateKey and its update_mask, RevokeKey's
reason, RevokeLeakedKeys, Authorize's client_ip and the new reasons, the audit trail's new
fields."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from .harness import KEY_PATTERN, ServerProcess, poll
from .test_grpcurl import ok_json

pytestmark = pytest.mark.slow

SERVICE = "keysvc.v1.KeyService"
EXPIRY_DEADLINE = 10.0


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def in_days(days: float) -> str:
    return rfc3339(datetime.now(UTC) + timedelta(days=days))


def call(server: ServerProcess, rpc: str, request: dict[str, Any], *, admin: bool = True) -> Any:
    """grpcurl's JSON answer to KeyService/`rpc`; fails the test if grpcurl fails."""
    return ok_json(
        server,
        f"{SERVICE}/{rpc}",
        data=json.dumps(request),
        token=server.admin_token if admin else None,
    )


def refused(server: ServerProcess, rpc: str, request: dict[str, Any]) -> str:
    """grpcurl's error output for an admin call the server refuses; fails if it succeeds."""
    result = server.grpcurl(f"{SERVICE}/{rpc}", data=json.dumps(request), token=server.admin_token)
    assert result.returncode != 0, result.stdout
    return result.stderr


def create(server: ServerProcess, account: str, **fields: Any) -> Any:
    request = {
        "account_id": account,
        "name": "Production server",
        "mode": "MODE_LIVE",
        "scopes": ["links:read"],
        **fields,
    }
    return call(server, "CreateKey", request)


def decide(server: ServerProcess, secret: str, **fields: Any) -> tuple[int, str]:
    answer = call(server, "Authorize", {"api_key": secret, **fields}, admin=False)
    return answer["http_status"], answer["reason"]


class TestReflection:
    def test_list_shows_the_lifecycle_rpcs(self, server: ServerProcess) -> None:
        """`grpcurl list keysvc.v1.KeyService` shows the eleven RPCs, RollKey, UpdateKey and
        RevokeLeakedKeys among them."""
        result = server.grpcurl("list", SERVICE)

        assert result.returncode == 0, result.stderr
        assert sorted(result.stdout.split()) == [
            f"{SERVICE}.{name}"
            for name in sorted(
                [
                    "Authorize", "CreateKey", "GetKey", "ListAuditEvents", "ListKeys",
                    "ListScopes", "RevokeKey", "RevokeLeakedKeys", "RollKey", "Session",
                    "UpdateKey",
                ]
            )
        ]  # fmt: skip


class TestCreateKey:
    def test_expire_time_and_allowed_ips(self, server: ServerProcess, account: str) -> None:
        """CreateKey takes expire_time as an RFC 3339 string and allowed_ips as a list, and
        answers with both; the key is allowed from a listed address only."""
        expiry = in_days(30)

        created = create(server, account, expire_time=expiry, allowed_ips=["10.0.0.0/8"])

        assert created["key"]["expire_time"] == expiry
        assert created["key"]["allowed_ips"] == ["10.0.0.0/8"]
        assert created["key"]["status"] == "KEY_STATUS_ACTIVE"
        secret = created["secret"]
        assert decide(server, secret, client_ip="10.1.2.3") == (200, "REASON_ALLOWED")
        assert decide(server, secret, client_ip="192.0.2.1") == (403, "REASON_IP_NOT_ALLOWED")
        assert decide(server, secret) == (403, "REASON_IP_NOT_ALLOWED")

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"expire_time": "2020-01-01T00:00:00Z"}, "expire_time"),
            ({"allowed_ips": ["10.0.0.0/8", "example.com"]}, "allowed_ips"),
        ],
        ids=["past-expiry", "bad-address"],
    )
    def test_bad_values_name_the_field(
        self, server: ServerProcess, account: str, fields: dict[str, Any], field: str
    ) -> None:
        """A past expire_time or a bad address is InvalidArgument naming the field."""
        request = {
            "account_id": account, "name": "n", "mode": "MODE_LIVE", "scopes": ["links:read"],
            **fields,
        }  # fmt: skip

        error = refused(server, "CreateKey", request)

        assert "InvalidArgument" in error
        assert re.search(rf"Message: {field}(\[\d+\])?: ", error), error


class TestExpiry:
    def test_an_expired_key_is_refused_401_expired(
        self, server: ServerProcess, account: str
    ) -> None:
        """A key past its expire_time is REASON_EXPIRED, 401, and listed KEY_STATUS_EXPIRED."""
        expiry = rfc3339(datetime.now(UTC) + timedelta(seconds=3))
        created = create(server, account, expire_time=expiry)
        assert decide(server, created["secret"]) == (200, "REASON_ALLOWED")

        poll(
            lambda: decide(server, created["secret"]) == (401, "REASON_EXPIRED"),
            timeout=EXPIRY_DEADLINE,
            what="401 REASON_EXPIRED",
            interval=0.3,
        )

        listed = call(server, "ListKeys", {"account_id": account, "status": "KEY_STATUS_EXPIRED"})
        assert [k["id"] for k in listed["keys"]] == [created["key"]["id"]]


class TestRollKey:
    def test_grace_as_a_duration_string(self, server: ServerProcess, account: str) -> None:
        """RollKey with grace "3600s" answers key, secret and rolled; rolled expires in an hour
        and both keys are allowed; the audit trail names both ids."""
        old = create(server, account, name="Checkout", allowed_ips=["2001:db8::/32"])
        old_id = old["key"]["id"]

        before = datetime.now(UTC)
        rolled = call(server, "RollKey", {"account_id": account, "id": old_id, "grace": "3600s"})

        assert KEY_PATTERN.fullmatch(rolled["secret"])
        assert rolled["key"]["name"] == "Checkout"
        assert rolled["key"]["allowed_ips"] == ["2001:db8::/32"]
        assert rolled["rolled"]["id"] == old_id
        assert rolled["rolled"]["status"] == "KEY_STATUS_ACTIVE"
        ends = datetime.fromisoformat(rolled["rolled"]["expire_time"])
        assert abs(ends - (before + timedelta(hours=1))) < timedelta(seconds=5)
        for secret in (old["secret"], rolled["secret"]):
            assert decide(server, secret, client_ip="2001:db8::1") == (200, "REASON_ALLOWED")
        events = call(server, "ListAuditEvents", {"account_id": account})["events"]
        rolls = [e for e in events if e["action"] == "AUDIT_ACTION_KEY_ROLLED"]
        assert [(e["key_id"], e["related_key_id"]) for e in rolls] == [
            (old_id, rolled["key"]["id"])
        ]

    def test_grace_zero_revokes_at_once(self, server: ServerProcess, account: str) -> None:
        """RollKey with grace "0s" answers the old key KEY_STATUS_REVOKED; it is 401 REVOKED."""
        old = create(server, account)

        rolled = call(
            server, "RollKey", {"account_id": account, "id": old["key"]["id"], "grace": "0s"}
        )

        assert rolled["rolled"]["status"] == "KEY_STATUS_REVOKED"
        assert decide(server, old["secret"]) == (401, "REASON_REVOKED")
        assert decide(server, rolled["secret"]) == (200, "REASON_ALLOWED")

    def test_a_grace_over_7_days_names_grace(self, server: ServerProcess, account: str) -> None:
        """A grace of 7 days and a second is InvalidArgument naming grace."""
        old = create(server, account)

        error = refused(
            server, "RollKey", {"account_id": account, "id": old["key"]["id"], "grace": "604801s"}
        )

        assert "InvalidArgument" in error
        assert "Message: grace: " in error, error

    def test_a_revoked_key_is_a_failed_precondition(
        self, server: ServerProcess, account: str
    ) -> None:
        """Rolling a revoked key is FailedPrecondition."""
        old = create(server, account)
        call(server, "RevokeKey", {"account_id": account, "id": old["key"]["id"]})

        error = refused(
            server, "RollKey", {"account_id": account, "id": old["key"]["id"], "grace": "60s"}
        )

        assert "FailedPrecondition" in error, error


class TestUpdateKey:
    def test_only_the_masked_fields_change(self, server: ServerProcess, account: str) -> None:
        """With update_mask paths name and allowed_ips, those change and scopes, though sent,
        do not. (grpcurl takes a FieldMask as {"paths": [...]}, not as proto3 JSON's string.)"""
        created = create(server, account, scopes=["links:read", "links:write"])
        key_id = created["key"]["id"]

        updated = call(
            server,
            "UpdateKey",
            {
                "key": {
                    "account_id": account, "id": key_id, "name": "Renamed",
                    "scopes": ["events:read"], "allowed_ips": ["192.0.2.0/24"],
                },
                "update_mask": {"paths": ["name", "allowed_ips"]},
            },
        )  # fmt: skip

        assert updated["name"] == "Renamed"
        assert updated["allowed_ips"] == ["192.0.2.0/24"]
        assert updated["scopes"] == ["links:read", "links:write"]
        assert decide(server, created["secret"]) == (403, "REASON_IP_NOT_ALLOWED")

    def test_a_masked_field_left_out_is_cleared(self, server: ServerProcess, account: str) -> None:
        """update_mask paths expire_time and allowed_ips, with neither in the key, clear both."""
        created = create(server, account, expire_time=in_days(1), allowed_ips=["10.0.0.0/8"])

        updated = call(
            server,
            "UpdateKey",
            {
                "key": {"account_id": account, "id": created["key"]["id"]},
                "update_mask": {"paths": ["expire_time", "allowed_ips"]},
            },
        )

        assert updated.get("expire_time") is None
        assert updated["allowed_ips"] == []
        assert updated["status"] == "KEY_STATUS_ACTIVE"

    def test_without_a_mask_the_fields_set_change(
        self, server: ServerProcess, account: str
    ) -> None:
        """Without update_mask, the fields set in the key change (AIP-134) and no other."""
        created = create(server, account, allowed_ips=["10.0.0.0/8"])

        updated = call(
            server,
            "UpdateKey",
            {"key": {"account_id": account, "id": created["key"]["id"], "name": "Only the name"}},
        )

        assert updated["name"] == "Only the name"
        assert updated["allowed_ips"] == ["10.0.0.0/8"]
        assert updated["scopes"] == ["links:read"]

    def test_a_star_mask_replaces_all_four_but_scopes_stay(
        self, server: ServerProcess, account: str
    ) -> None:
        """update_mask path "*" sets name and clears the unset allowed_ips and expire_time, while
        scopes, unset, stay as they were."""
        created = create(
            server, account, scopes=["events:read"], expire_time=in_days(1),
            allowed_ips=["10.0.0.0/8"],
        )  # fmt: skip

        updated = call(
            server,
            "UpdateKey",
            {
                "key": {"account_id": account, "id": created["key"]["id"], "name": "Star"},
                "update_mask": {"paths": ["*"]},
            },
        )

        assert updated["name"] == "Star"
        assert updated["scopes"] == ["events:read"]
        assert updated["allowed_ips"] == []
        assert updated.get("expire_time") is None

    @pytest.mark.parametrize("path", ["mode", "id", "account_id", "prefix", "nonsense"])
    def test_a_field_that_cannot_change_names_update_mask(
        self, server: ServerProcess, account: str, path: str
    ) -> None:
        """A mask naming anything but name, scopes, allowed_ips and expire_time is
        InvalidArgument naming update_mask, and nothing changes."""
        created = create(server, account)
        key_id = created["key"]["id"]

        error = refused(
            server,
            "UpdateKey",
            {
                "key": {"account_id": account, "id": key_id, "mode": "MODE_TEST", "name": "x"},
                "update_mask": {"paths": ["name", path]},
            },
        )

        assert "InvalidArgument" in error
        assert "Message: update_mask: " in error, error
        assert call(server, "GetKey", {"account_id": account, "id": key_id}) == created["key"]


class TestRevokeKey:
    def test_the_reason_is_kept(self, server: ServerProcess, account: str) -> None:
        """RevokeKey's reason comes back as the key's revocation_reason and in the audit
        event's reason."""
        created = create(server, account)

        revoked = call(
            server,
            "RevokeKey",
            {"account_id": account, "id": created["key"]["id"], "reason": "unused"},
        )

        assert (revoked["status"], revoked["revocation_reason"]) == (
            "KEY_STATUS_REVOKED",
            "unused",
        )
        events = call(server, "ListAuditEvents", {"account_id": account})["events"]
        assert (events[0]["action"], events[0]["reason"]) == ("AUDIT_ACTION_KEY_REVOKED", "unused")


class TestRevokeLeakedKeys:
    def test_outcomes_per_key(self, server: ServerProcess, account: str) -> None:
        """RevokeLeakedKeys answers one result per key, in order, and revokes the real one."""
        leaked = create(server, account)

        answer = call(
            server,
            "RevokeLeakedKeys",
            {"keys": [leaked["secret"], "garbage"], "source": "https://gist.github.com/x"},
        )

        assert answer["results"] == [
            {
                "prefix": leaked["key"]["prefix"],
                "outcome": "LEAK_OUTCOME_REVOKED",
                "key_id": leaked["key"]["id"],
                "account_id": account,
            },
            {"prefix": "", "outcome": "LEAK_OUTCOME_NOT_FOUND", "key_id": "", "account_id": ""},
        ]
        assert decide(server, leaked["secret"]) == (401, "REASON_REVOKED")
        events = call(server, "ListAuditEvents", {"account_id": account})["events"]
        assert (events[0]["action"], events[0]["reason"]) == (
            "AUDIT_ACTION_KEY_LEAK_REVOKED",
            "https://gist.github.com/x",
        )

    def test_no_keys_names_keys(self, server: ServerProcess) -> None:
        """An empty list is InvalidArgument naming keys."""
        error = refused(server, "RevokeLeakedKeys", {"keys": [], "source": "s"})

        assert "InvalidArgument" in error
        assert "Message: keys: " in error, error


class TestAuditTrail:
    def test_an_update_lists_its_changes(self, server: ServerProcess, account: str) -> None:
        """The KEY_UPDATED event carries changes: field, before and after."""
        created = create(server, account, name="Before")

        call(
            server,
            "UpdateKey",
            {
                "key": {"account_id": account, "id": created["key"]["id"], "name": "After"},
                "update_mask": {"paths": ["name"]},
            },
        )

        event = call(server, "ListAuditEvents", {"account_id": account})["events"][0]
        assert event["action"] == "AUDIT_ACTION_KEY_UPDATED"
        assert event["changes"] == [{"field": "name", "before": "Before", "after": "After"}]
