"""The admin credential: which RPCs need it, how it is sent, where it comes from and goes."""

from __future__ import annotations

import stat
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from keysvc_client import KeyServiceClient, Unauthenticated, keysvc_pb2
from keysvc_client.v1 import keysvc_pb2_grpc

from .harness import ServerFactory, ServerProcess, rpc_error, verdict

pytestmark = pytest.mark.slow

pb = keysvc_pb2
ADMIN_CALLS: dict[str, Callable[[KeyServiceClient], object]] = {
    "CreateKey": lambda c: c.create_key("acct_admin", "n", "live", ["links:read"]),
    "GetKey": lambda c: c.get_key("acct_admin", "AbCdEf123456"),
    "ListKeys": lambda c: c.list_keys("acct_admin"),
    "RevokeKey": lambda c: c.revoke_key("acct_admin", "AbCdEf123456"),
    "ListScopes": lambda c: c.list_scopes(),
    "ListAuditEvents": lambda c: c.list_audit_events("acct_admin"),
}
ADMIN_REQUESTS: dict[str, Any] = {
    "CreateKey": pb.CreateKeyRequest(
        account_id="acct_admin", name="n", mode=pb.MODE_LIVE, scopes=["links:read"]
    ),
    "GetKey": pb.GetKeyRequest(account_id="acct_admin", id="AbCdEf123456"),
    "ListKeys": pb.ListKeysRequest(account_id="acct_admin"),
    "RevokeKey": pb.RevokeKeyRequest(account_id="acct_admin", id="AbCdEf123456"),
    "ListScopes": pb.ListScopesRequest(),
    "ListAuditEvents": pb.ListAuditEventsRequest(account_id="acct_admin"),
}


class TestAdminRpcsNeedTheToken:
    @pytest.mark.parametrize("call", ADMIN_CALLS.values(), ids=ADMIN_CALLS.keys())
    def test_without_a_token(self, server: ServerProcess, call: Any) -> None:
        """Every admin RPC without a token is UNAUTHENTICATED."""
        with server.client(admin=False) as client, pytest.raises(Unauthenticated) as raised:
            call(client)

        assert "credential required" in raised.value.details

    @pytest.mark.parametrize("call", ADMIN_CALLS.values(), ids=ADMIN_CALLS.keys())
    def test_with_a_wrong_token(self, server: ServerProcess, call: Any) -> None:
        """Every admin RPC with a wrong token is UNAUTHENTICATED."""
        with server.client(token="ksadm_not-the-token") as client, pytest.raises(Unauthenticated):
            call(client)

    @pytest.mark.parametrize(
        "header",
        [
            "{token}",
            "Basic {token}",
            "Bearer",
            "Bearer {token}x",
            "Bearer {prefix}",
        ],
        ids=["no-scheme", "basic-scheme", "no-token", "token-plus-a-char", "token-prefix"],
    )
    @pytest.mark.parametrize("method", ADMIN_REQUESTS.keys())
    def test_with_a_malformed_header(self, server: ServerProcess, method: str, header: str) -> None:
        """Anything but 'authorization: Bearer <the token>' is UNAUTHENTICATED."""
        value = header.format(token=server.admin_token, prefix=server.admin_token[:-1])
        with server.channel() as channel:
            call = getattr(server.stub(channel), method)
            err = rpc_error(
                lambda: call(
                    ADMIN_REQUESTS[method], metadata=(("authorization", value),), timeout=10
                )
            )

        assert err.code() == grpc.StatusCode.UNAUTHENTICATED

    def test_bearer_scheme_is_case_insensitive(self, server: ServerProcess) -> None:
        """'bearer <token>' in lower case is accepted like 'Bearer <token>'."""
        with server.channel() as channel:
            stub = keysvc_pb2_grpc.KeyServiceStub(channel)
            response = stub.ListScopes(
                pb.ListScopesRequest(),
                metadata=(("authorization", f"bearer {server.admin_token}"),),
                timeout=10,
            )

        assert len(response.scopes) == 9

    def test_a_rejected_create_leaves_nothing_behind(self, server: ServerProcess) -> None:
        """A CreateKey refused for its credential creates no key."""
        with server.client(admin=False) as anonymous, pytest.raises(Unauthenticated):
            anonymous.create_key("acct_unauth", "n", "live", ["links:read"])

        with server.client() as admin:
            assert list(admin.list_keys("acct_unauth").keys) == []


class TestAuthorizeIsOpen:
    def test_needs_no_token(self, server: ServerProcess) -> None:
        """Authorize decides for a caller that sends no admin token."""
        with server.client() as admin:
            secret = admin.create_key("acct_open", "n", "live", ["links:read"]).secret
        with server.client(admin=False) as client:
            decision = client.authorize(secret)

        assert verdict(decision) == (200, "REASON_ALLOWED")

    def test_a_wrong_token_does_not_matter(self, server: ServerProcess) -> None:
        """A stray wrong admin token on Authorize is ignored, not refused."""
        with server.client(token="ksadm_wrong") as client:
            decision = client.authorize("garbage")

        assert verdict(decision) == (401, "REASON_MALFORMED")

    def test_health_is_open(self, server: ServerProcess) -> None:
        """Health checks answer without a token, so that probes need no secret."""
        assert server.health() == health_pb2.HealthCheckResponse.SERVING


class TestGeneratedTokenFile:
    def test_is_private_to_the_owner(self, server: ServerProcess) -> None:
        """The generated admin-token file has mode 0600 and holds the token that works."""
        path = server.data_dir / "admin-token"

        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().strip() == server.admin_token
        assert server.admin_token.startswith("ksadm_")

    def test_log_names_the_path_but_not_the_token(self, server: ServerProcess) -> None:
        """The start-up log says where the token file is and never prints the token."""
        log = server.read_log()

        assert str((server.data_dir / "admin-token").resolve()) in log
        assert server.admin_token not in log
        # Not even most of it.
        assert server.admin_token[6:26] not in log

    def test_survives_a_restart(self, server_factory: ServerFactory) -> None:
        """A restarted server reads the token it generated before, and that token still works."""
        first = server_factory.start()
        token = first.admin_token
        assert first.stop() == 0

        second = server_factory.start(data_dir=first.data_dir)

        assert second.admin_token == token
        assert "read from" in second.read_log()
        with second.client(token=token) as client:
            assert len(client.list_scopes()) == 9


class TestTokenFromEnvironment:
    TOKEN = "ksadm_from-the-environment-0123456789"

    def test_replaces_the_generated_file(self, server_factory: ServerFactory) -> None:
        """With $KEYSVC_ADMIN_TOKEN set, that token works and the earlier file's token does not."""
        first = server_factory.start()
        file_token = first.admin_token
        assert first.stop() == 0

        server = server_factory.start(
            data_dir=first.data_dir, env={"KEYSVC_ADMIN_TOKEN": self.TOKEN}
        )

        with server.client(token=self.TOKEN) as client:
            assert len(client.list_scopes()) == 9
        with server.client(token=file_token) as client, pytest.raises(Unauthenticated):
            client.list_scopes()

    def test_no_file_is_generated_and_the_log_keeps_it_secret(
        self, server_factory: ServerFactory
    ) -> None:
        """A server given $KEYSVC_ADMIN_TOKEN writes no token file and never logs the token."""
        server = server_factory.start(env={"KEYSVC_ADMIN_TOKEN": self.TOKEN})

        assert not (server.data_dir / "admin-token").exists()
        log = server.read_log()
        assert "$KEYSVC_ADMIN_TOKEN" in log
        assert self.TOKEN not in log
