"""keysvc as an operator meets it with grpcurl: reflection, health, and a key's life in JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .harness import ServerProcess

pytestmark = pytest.mark.slow


def ok_json(
    server: ServerProcess, method: str, *, data: str = "{}", token: str | None = None
) -> Any:
    """grpcurl's JSON answer to `method`; fails the test if grpcurl fails."""
    result = server.grpcurl(method, data=data, token=token)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class TestReflection:
    def test_list_shows_the_services(self, server: ServerProcess) -> None:
        """`grpcurl list` finds KeyService and Health through reflection."""
        result = server.grpcurl("list")

        assert result.returncode == 0, result.stderr
        services = result.stdout.split()
        assert "keysvc.v1.KeyService" in services
        assert "grpc.health.v1.Health" in services

    def test_list_shows_every_rpc(self, server: ServerProcess) -> None:
        """`grpcurl list keysvc.v1.KeyService` shows the eleven RPCs of the contract."""
        result = server.grpcurl("list", "keysvc.v1.KeyService")

        assert result.returncode == 0, result.stderr
        assert sorted(result.stdout.split()) == [
            f"keysvc.v1.KeyService.{name}"
            for name in sorted(
                [
                    "Authorize",
                    "CreateKey",
                    "GetKey",
                    "ListAuditEvents",
                    "ListKeys",
                    "ListScopes",
                    "RevokeKey",
                    "RevokeLeakedKeys",
                    "RollKey",
                    "Session",
                    "UpdateKey",
                ]
            )
        ]


class TestHealth:
    @pytest.mark.parametrize("service", ["", "keysvc.v1.KeyService"])
    def test_check_is_serving(self, server: ServerProcess, service: str) -> None:
        """grpc.health.v1.Health/Check answers SERVING for the server and for KeyService."""
        answer = ok_json(
            server, "grpc.health.v1.Health/Check", data=json.dumps({"service": service})
        )

        assert answer == {"status": "SERVING"}


class TestKeyLifecycle:
    def test_create_authorize_revoke_authorize(self, server: ServerProcess, account: str) -> None:
        """A key created with grpcurl is allowed, then revoked, refused 401 REVOKED, and listed,
        and the audit trail shows both changes."""
        token = server.admin_token
        created = ok_json(
            server,
            "keysvc.v1.KeyService/CreateKey",
            token=token,
            data=json.dumps(
                {
                    "account_id": account,
                    "name": "Production server",
                    "mode": "MODE_LIVE",
                    "scopes": ["links:read", "sessions:write"],
                }
            ),
        )
        secret, key_id = created["secret"], created["key"]["id"]
        assert created["key"]["status"] == "KEY_STATUS_ACTIVE"
        assert created["key"]["scopes"] == ["links:read", "sessions:write"]
        assert secret.startswith("ck_live_")

        allowed = ok_json(
            server,
            "keysvc.v1.KeyService/Authorize",
            data=json.dumps({"api_key": f"Bearer {secret}", "required_scopes": ["links:read"]}),
        )
        assert (allowed["allowed"], allowed["http_status"], allowed["reason"]) == (
            True,
            200,
            "REASON_ALLOWED",
        )
        assert allowed["key_id"] == key_id

        revoked = ok_json(
            server,
            "keysvc.v1.KeyService/RevokeKey",
            token=token,
            data=json.dumps({"account_id": account, "id": key_id}),
        )
        assert revoked["status"] == "KEY_STATUS_REVOKED"
        assert revoked["revoked_at"]

        refused = ok_json(
            server,
            "keysvc.v1.KeyService/Authorize",
            data=json.dumps({"api_key": f"Bearer {secret}"}),
        )
        assert (refused["allowed"], refused["http_status"], refused["reason"]) == (
            False,
            401,
            "REASON_REVOKED",
        )

        listed = ok_json(
            server,
            "keysvc.v1.KeyService/ListKeys",
            token=token,
            data=json.dumps({"account_id": account}),
        )
        assert [(k["id"], k["status"]) for k in listed["keys"]] == [(key_id, "KEY_STATUS_REVOKED")]
        assert listed["keys"][0]["revoked_at"] == revoked["revoked_at"]

        audit = ok_json(
            server,
            "keysvc.v1.KeyService/ListAuditEvents",
            token=token,
            data=json.dumps({"account_id": account}),
        )
        assert [(e["action"], e["key_id"], e["actor"]) for e in audit["events"]] == [
            ("AUDIT_ACTION_KEY_REVOKED", key_id, "admin-token"),
            ("AUDIT_ACTION_KEY_CREATED", key_id, "admin-token"),
        ]
        assert audit["events"][0]["occurred_at"] == revoked["revoked_at"]

    def test_admin_rpc_without_token_fails(self, server: ServerProcess) -> None:
        """grpcurl without the admin header gets Unauthenticated and a non-zero exit."""
        result = server.grpcurl("keysvc.v1.KeyService/ListScopes", data="{}")

        assert result.returncode != 0
        assert "Unauthenticated" in result.stderr
        assert "credential required" in result.stderr

    def test_authorize_refusals_are_answers_not_errors(self, server: ServerProcess) -> None:
        """A malformed key is a normal grpcurl answer (exit 0) carrying 401 MALFORMED."""
        answer = ok_json(
            server, "keysvc.v1.KeyService/Authorize", data=json.dumps({"api_key": "not-a-key"})
        )

        assert (answer["allowed"], answer["http_status"], answer["reason"]) == (
            False,
            401,
            "REASON_MALFORMED",
        )


class TestSession:
    def test_one_message_of_requests_is_answered_in_one_message(
        self, server: ServerProcess
    ) -> None:
        """docs/contract.md's Session call: one message of requests, each answered under its
        id; decided without waiting on anything (no key at all, a malformed one), they come
        back in one message."""
        requests = [
            {"id": 1, "authorize": {"api_key": "", "required_scopes": ["links:read"]}},
            {"id": 2, "authorize": {"api_key": "not-a-key"}},
        ]

        answer = ok_json(
            server, "keysvc.v1.KeyService/Session", data=json.dumps({"requests": requests})
        )

        answers = {a["id"]: a["authorize"] for a in answer["responses"]}
        assert (answers["1"]["http_status"], answers["1"]["reason"]) == (401, "REASON_MISSING")
        assert (answers["2"]["http_status"], answers["2"]["reason"]) == (401, "REASON_MALFORMED")
        assert len(answers) == 2
