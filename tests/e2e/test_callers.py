"""The callers file: admins and authorizers by token, checked on every RPC; its mistakes
stop the server; `keysvc callers new-token` writes entries that work; the CLI's credential.

Who may call does not depend on storage, so these servers run on the embedded default.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from keysvc_client import KeyServiceClient, keysvc_pb2

from .harness import (
    COMMAND_TIMEOUT,
    KEYSVC,
    ServerFactory,
    ServerProcess,
    clean_environ,
    serve_command,
    verdict,
)

pytestmark = pytest.mark.slow

pb = keysvc_pb2
TIMEOUT = 10.0
ACCOUNT = "acct_callers"
# What `keysvc callers new-token` prints: kst_ and 32 random bytes in URL-safe base64.
TOKEN = re.compile(r"\bkst_[A-Za-z0-9_-]{43}\b")


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def entry(name: str, role: str, token: str) -> str:
    """A callers-file table for a caller holding `token`, as the README documents it."""
    return f'[[callers]]\nname = "{name}"\nrole = "{role}"\ntoken_sha256 = "{sha256_hex(token)}"\n'


def status_of(server: ServerProcess, rpc: str, request: Any, token: str | None) -> grpc.StatusCode:
    """The status code of one raw `rpc` call carrying `token` (None: no credential at all)."""
    metadata = None if token is None else (("authorization", f"Bearer {token}"),)
    with server.channel() as channel:
        try:
            getattr(server.stub(channel), rpc)(request, metadata=metadata, timeout=TIMEOUT)
        except grpc.RpcError as err:
            code: grpc.StatusCode = err.code()
            return code
    return grpc.StatusCode.OK


def run_keysvc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KEYSVC), *args],
        env=clean_environ(env),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


class Tokens:
    admin = "kst_" + secrets.token_urlsafe(32)
    authorizer = "kst_" + secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Servers of the module's own, on the embedded default."""
    factory = ServerFactory(tmp_path_factory.mktemp("callers"))
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def server(servers: ServerFactory, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    """A loopback server whose callers file holds one admin and one authorizer, by token."""
    callers = tmp_path_factory.mktemp("callers-file") / "callers.toml"
    admin = entry("dashboard", "admin", Tokens.admin)
    callers.write_text(admin + entry("api-eu-1", "authorizer", Tokens.authorizer))
    return servers.start("--callers", str(callers))


@pytest.fixture(scope="module")
def key_id(server: ServerProcess) -> str:
    """A key of ACCOUNT, for the admin RPCs that name one."""
    with KeyServiceClient(server.target, admin_token=Tokens.admin, timeout=TIMEOUT) as admin:
        return admin.create_key(ACCOUNT, "n", "live", ["links:read"]).key.id


def admin_requests(key_id: str) -> dict[str, Any]:
    return {
        "CreateKey": pb.CreateKeyRequest(
            account_id=ACCOUNT, name="n", mode=pb.MODE_TEST, scopes=["links:read"]
        ),
        "GetKey": pb.GetKeyRequest(account_id=ACCOUNT, id=key_id),
        "ListKeys": pb.ListKeysRequest(account_id=ACCOUNT),
        "RevokeKey": pb.RevokeKeyRequest(account_id=ACCOUNT, id=key_id),
        "ListScopes": pb.ListScopesRequest(),
        "ListAuditEvents": pb.ListAuditEventsRequest(account_id=ACCOUNT),
    }


ADMIN_RPCS = list(admin_requests("x"))


class TestAdminRpcs:
    @pytest.mark.parametrize("rpc", ADMIN_RPCS)
    def test_refuse_the_authorizer(self, server: ServerProcess, key_id: str, rpc: str) -> None:
        """Every admin RPC called with an authorizer's token is PERMISSION_DENIED."""
        request = admin_requests(key_id)[rpc]

        code = status_of(server, rpc, request, Tokens.authorizer)

        assert code == grpc.StatusCode.PERMISSION_DENIED

    @pytest.mark.parametrize("token", [None, "kst_not-a-configured-token"], ids=["none", "wrong"])
    @pytest.mark.parametrize("rpc", ADMIN_RPCS)
    def test_refuse_no_or_a_wrong_token(
        self, server: ServerProcess, key_id: str, rpc: str, token: str | None
    ) -> None:
        """Every admin RPC without a token, or with one keysvc does not know, is
        UNAUTHENTICATED."""
        request = admin_requests(key_id)[rpc]

        code = status_of(server, rpc, request, token)

        assert code == grpc.StatusCode.UNAUTHENTICATED

    @pytest.mark.parametrize("rpc", ADMIN_RPCS)
    def test_answer_the_admin(self, server: ServerProcess, key_id: str, rpc: str) -> None:
        """Every admin RPC called with the admin's token is answered."""
        request = admin_requests(key_id)[rpc]

        code = status_of(server, rpc, request, Tokens.admin)

        assert code == grpc.StatusCode.OK


def session_status_of(server: ServerProcess, token: str | None) -> grpc.StatusCode:
    """The status of a Session stream carrying `token` that asks one Authorize and hangs up."""
    metadata = None if token is None else (("authorization", f"Bearer {token}"),)
    request = pb.SessionRequest(id=1, authorize=pb.AuthorizeRequest(api_key="garbage"))
    message = pb.SessionRequests(requests=[request])
    with server.channel() as channel:
        call = server.stub(channel).Session(iter([message]), metadata=metadata, timeout=TIMEOUT)
        try:
            answers = [answer for message in call for answer in message.responses]
        except grpc.RpcError as err:
            code: grpc.StatusCode = err.code()
            return code
    assert [answer.authorize.http_status for answer in answers] == [401]
    return grpc.StatusCode.OK


class TestSession:
    @pytest.mark.parametrize(
        ("token", "code"),
        [
            (Tokens.authorizer, grpc.StatusCode.OK),
            (Tokens.admin, grpc.StatusCode.OK),
            (None, grpc.StatusCode.UNAUTHENTICATED),
            ("kst_not-a-configured-token", grpc.StatusCode.UNAUTHENTICATED),
        ],
        ids=["authorizer", "admin", "none", "wrong"],
    )
    def test_is_open_to_whoever_may_call_authorize(
        self, server: ServerProcess, token: str | None, code: grpc.StatusCode
    ) -> None:
        """The Session stream is Authorize's: the same credentials open it."""
        assert session_status_of(server, token) == code


class TestAuthorize:
    def test_decides_for_the_authorizer(self, server: ServerProcess) -> None:
        """Authorize with the authorizer's token returns a decision."""
        with KeyServiceClient(server.target, admin_token=Tokens.admin, timeout=TIMEOUT) as admin:
            secret = admin.create_key(ACCOUNT, "n", "live", ["links:read"]).secret
        with KeyServiceClient(
            server.target, admin_token=Tokens.authorizer, timeout=TIMEOUT
        ) as client:
            decision = client.authorize(secret, ["links:read"])

        assert verdict(decision) == (200, "REASON_ALLOWED")

    def test_decides_for_the_admin(self, server: ServerProcess) -> None:
        """An admin may call Authorize too."""
        request = pb.AuthorizeRequest(api_key="garbage")

        assert status_of(server, "Authorize", request, Tokens.admin) == grpc.StatusCode.OK

    @pytest.mark.parametrize("token", [None, "kst_not-a-configured-token"], ids=["none", "wrong"])
    def test_needs_a_credential_once_authorizers_are_configured(
        self, server: ServerProcess, token: str | None
    ) -> None:
        """With authorizers in the callers file, Authorize without a known token is
        UNAUTHENTICATED, even on loopback."""
        request = pb.AuthorizeRequest(api_key="garbage")

        assert status_of(server, "Authorize", request, token) == grpc.StatusCode.UNAUTHENTICATED


class TestCallersFileMistakes:
    GOOD = "0" * 64

    @pytest.mark.parametrize(
        ("content", "named"),
        [
            ("[[callers]\nname = 'x'\n", "not valid TOML"),
            ('[[callers]]\nname = "x"\nrole = "admin"\n', "needs token_sha256 or client_identity"),
            ('[[callers]]\nname = "x"\nrole = "admin"\ntoken_sha256 = "abc123"\n', "64"),
            (
                '[[callers]]\nname = "x"\nrole = "admin"\ntoken_sha256 = "kst_raw-token"\n',
                "never the token itself",
            ),
            (
                f'[[callers]]\nname = "x"\nrole = "superuser"\ntoken_sha256 = "{GOOD}"\n',
                "role must be 'admin' or 'authorizer'",
            ),
            (
                f'[[callers]]\nname = "x"\nrole = "admin"\ntoken_sha256 = "{GOOD}"\n'
                f'[[callers]]\nname = "x"\nrole = "authorizer"\nclient_identity = "x"\n',
                "'x' is used twice",
            ),
            (
                f'[[callers]]\nname = "x"\nrole = "admin"\ntoken_sha256 = "{GOOD}"\n'
                f'[[callers]]\nname = "y"\nrole = "authorizer"\ntoken_sha256 = "{GOOD}"\n',
                "token of its own",
            ),
            (f'[[caller]]\nname = "x"\nrole = "admin"\ntoken_sha256 = "{GOOD}"\n', "[[callers]]"),
            (
                f'[[callers]]\nname = "x"\nrole = "admin"\ntoken = "{GOOD}"\n',
                "unknown field(s) token",
            ),
        ],
        ids=[
            "bad-toml",
            "no-credential",
            "short-digest",
            "raw-token",
            "unknown-role",
            "duplicate-name",
            "shared-token",
            "misspelt-table",
            "unknown-field",
        ],
    )
    def test_stop_the_server(self, tmp_path: Path, content: str, named: str) -> None:
        """`keysvc serve` with a faulty callers file exits non-zero, naming the file and
        the problem, before it creates anything."""
        callers = tmp_path / "callers.toml"
        callers.write_text(content)

        result = subprocess.run(
            serve_command(tmp_path / "data", "--callers", str(callers)),
            env=clean_environ(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )

        assert result.returncode != 0
        message = result.stderr.splitlines()[-1]
        assert str(callers) in message
        assert named in message
        assert not (tmp_path / "data" / "admin-token").exists()

    def test_a_missing_file_stops_the_server(self, tmp_path: Path) -> None:
        """A --callers file that does not exist stops `keysvc serve` with a message naming it."""
        missing = tmp_path / "nowhere.toml"

        result = subprocess.run(
            serve_command(tmp_path / "data", "--callers", str(missing)),
            env=clean_environ(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )

        assert result.returncode != 0
        assert f"cannot read callers file {missing}" in result.stderr


class TestNewToken:
    def test_prints_the_token_once_and_the_entry_without_it(self) -> None:
        """new-token shows the token once with a note to store it, and an entry holding
        only its SHA-256, on standard output by itself."""
        result = run_keysvc("callers", "new-token", "--name", "api-eu-1", "--role", "authorizer")

        assert result.returncode == 0, result.stderr
        tokens = TOKEN.findall(result.stdout + result.stderr)
        assert len(tokens) == 1
        token = tokens[0]
        assert "Store this token now" in result.stderr
        assert token not in result.stdout
        assert result.stdout == (
            "[[callers]]\n"
            'name = "api-eu-1"\n'
            'role = "authorizer"\n'
            f'token_sha256 = "{sha256_hex(token)}"\n'
        )

    def test_each_token_is_new(self) -> None:
        """Two runs give two different tokens."""
        first = run_keysvc("callers", "new-token", "--name", "a", "--role", "admin")
        second = run_keysvc("callers", "new-token", "--name", "a", "--role", "admin")

        assert TOKEN.findall(first.stderr) != TOKEN.findall(second.stderr)

    def test_json(self) -> None:
        """--json prints name, role, token and its token_sha256 for scripts."""
        result = run_keysvc("callers", "new-token", "--name", "ops", "--role", "admin", "--json")

        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        assert document["name"] == "ops"
        assert document["role"] == "admin"
        assert TOKEN.fullmatch(document["token"])
        assert document["token_sha256"] == sha256_hex(document["token"])

    @pytest.mark.parametrize(
        ("args", "named"),
        [(("--name", "two words", "--role", "admin"), "--name"), (("--name", "x"), "--role")],
        ids=["bad-name", "no-role"],
    )
    def test_refuses_bad_arguments(self, args: tuple[str, ...], named: str) -> None:
        """A name the callers file would refuse, or a missing role, prints no token."""
        result = run_keysvc("callers", "new-token", *args)

        assert result.returncode == 2
        assert named in result.stderr
        assert not TOKEN.search(result.stdout + result.stderr)

    def test_round_trip(self, servers: ServerFactory, tmp_path: Path) -> None:
        """Entries appended from new-token's standard output make a callers file whose
        tokens work with their roles."""
        callers = tmp_path / "callers.toml"
        tokens = {}
        for name, role in (("dashboard", "admin"), ("api-eu-1", "authorizer")):
            result = run_keysvc("callers", "new-token", "--name", name, "--role", role)
            assert result.returncode == 0, result.stderr
            with callers.open("a") as file:
                file.write(result.stdout)
            tokens[role] = TOKEN.findall(result.stderr)[0]

        server = servers.start("--callers", str(callers))

        with KeyServiceClient(server.target, admin_token=tokens["admin"], timeout=TIMEOUT) as admin:
            secret = admin.create_key(ACCOUNT, "n", "test", ["links:read"]).secret
        with KeyServiceClient(
            server.target, admin_token=tokens["authorizer"], timeout=TIMEOUT
        ) as authorizer:
            decision = authorizer.authorize(secret, ["links:read"])
        assert verdict(decision) == (200, "REASON_ALLOWED")
        request = pb.ListScopesRequest()
        denied = status_of(server, "ListScopes", request, tokens["authorizer"])
        assert denied == grpc.StatusCode.PERMISSION_DENIED


class TestCliCredential:
    def test_authorize_sends_keysvc_token(self, server: ServerProcess) -> None:
        """`keysvc authorize` sends $KEYSVC_TOKEN, so an authorizer's token gets a decision."""
        result = server.cli("authorize", "garbage", env={"KEYSVC_TOKEN": Tokens.authorizer})

        assert result.returncode == 1, result.stderr
        assert result.stdout.startswith("401 MALFORMED")

    def test_authorize_without_a_credential_is_refused(self, server: ServerProcess) -> None:
        """Without any credential, `keysvc authorize` reports UNAUTHENTICATED and exits 2."""
        result = server.cli("authorize", "garbage")

        assert result.returncode == 2
        assert "UNAUTHENTICATED" in result.stderr

    def test_admin_commands_with_the_authorizer_token(self, server: ServerProcess) -> None:
        """An admin command with an authorizer's $KEYSVC_TOKEN is PERMISSION_DENIED (exit 2)."""
        result = server.cli(
            "keys", "list", "--account", ACCOUNT, env={"KEYSVC_TOKEN": Tokens.authorizer}
        )

        assert result.returncode == 2
        assert "PERMISSION_DENIED" in result.stderr

    def test_keysvc_token_comes_before_keysvc_admin_token(self, server: ServerProcess) -> None:
        """$KEYSVC_TOKEN wins over $KEYSVC_ADMIN_TOKEN."""
        env = {"KEYSVC_TOKEN": Tokens.admin, "KEYSVC_ADMIN_TOKEN": "kst_stale"}

        result = server.cli("scopes", env=env)

        assert result.returncode == 0, result.stderr
        assert "links:read" in result.stdout

    def test_admin_commands_without_a_credential_say_how_to_give_one(
        self, server: ServerProcess
    ) -> None:
        """With no token anywhere, an admin command fails before calling, naming $KEYSVC_TOKEN."""
        result = server.cli("scopes")

        assert result.returncode == 2
        assert "$KEYSVC_TOKEN" in result.stderr
        assert "admin-token" in result.stderr


class TestLog:
    def test_names_the_callers_but_never_their_tokens(self, server: ServerProcess) -> None:
        """After calls with every token, the log names the callers file and never a token."""
        for token in (Tokens.admin, Tokens.authorizer, "kst_not-a-configured-token"):
            status_of(server, "ListScopes", pb.ListScopesRequest(), token)
            status_of(server, "Authorize", pb.AuthorizeRequest(api_key="garbage"), token)

        log = server.read_log()

        assert "callers:" in log
        assert "1 admins, 1 authorizers" in log
        for token in (Tokens.admin, Tokens.authorizer):
            assert token not in log
            assert token[4:24] not in log
