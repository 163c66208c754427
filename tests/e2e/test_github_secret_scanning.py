"""GitHub secret scanning against a real `keysvc serve --http-listen`: alerts signed as GitHub
signs them (with a key pair made here, listed in the server's --github-keys-file) revoke the
real keys among them as leaked, and are answered in GitHub's feedback format; forged or
malformed alerts revoke nothing."""

from __future__ import annotations

import http.client
import json
import secrets
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from keysvc_client import KeyServiceClient, keysvc_pb2

from tests.conftest import Backend
from tests.github_alerts import (
    URL,
    GitHubSigner,
    alert,
    feedback,
    finding,
    keys_document,
)

from .harness import (
    BASE62,
    COMMAND_TIMEOUT,
    NewKey,
    ServerFactory,
    ServerProcess,
    clean_environ,
    serve_command,
    verdict,
    with_checksum,
)
from .test_audit import LOOPBACK_PEER
from .test_transport import Certificates

pytestmark = pytest.mark.slow

pb = keysvc_pb2
PATH = "/github/secret-scanning"
ALLOWED, REVOKED = (200, "REASON_ALLOWED"), (401, "REASON_REVOKED")


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any


def post(
    server: ServerProcess,
    body: bytes,
    headers: dict[str, str],
    *,
    context: ssl.SSLContext | None = None,
) -> Answer:
    """POSTs `body` to the server's GitHub endpoint, as GitHub would."""
    request = urllib.request.Request(
        http_base(server) + PATH, data=body, method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return Answer(response.status, json.loads(response.read()))
    except urllib.error.HTTPError as err:
        with err:
            return Answer(err.code, json.loads(err.read()))


def http_base(server: ServerProcess) -> str:
    """The HTTP listener's URL, reached over loopback when it listens on every interface."""
    parts = urlsplit(server.http_url)
    host = "127.0.0.1" if parts.hostname in ("0.0.0.0", "::") else parts.hostname
    return f"{parts.scheme}://{host}:{parts.port}"


def made_up_key(mode: str = "live") -> str:
    """A well-formed key (prefix, base62 body, valid checksum) that keysvc never issued."""
    body = "".join(secrets.choice(BASE62) for _ in range(44))
    return with_checksum(f"ck_{mode}_{body}")


def wrong_secret(key_id: str) -> str:
    """A well-formed key with a real key id and a secret that is not its own."""
    return with_checksum(f"ck_live_{key_id}" + "".join(secrets.choice(BASE62) for _ in range(32)))


def write_keys(directory: Path, *signers: GitHubSigner) -> Path:
    path = directory / "github-keys.json"
    path.write_text(keys_document(*signers))
    return path


@pytest.fixture(scope="module")
def github() -> GitHubSigner:
    """GitHub's signing key, as the server's keys file lists it."""
    return GitHubSigner.new()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, module_backend: Backend, github: GitHubSigner
) -> Iterator[ServerProcess]:
    """One server with the GitHub endpoint on loopback, shared by the module's tests (each in an
    account of its own); the admin, public and new_key fixtures use it."""
    base = tmp_path_factory.mktemp("github")
    factory = ServerFactory(base, args=module_backend.server_args)
    try:
        yield factory.start(
            "--http-listen", "127.0.0.1:0", "--github-keys-file", str(write_keys(base, github))
        )
    finally:
        factory.close()


def leak_events(admin: KeyServiceClient, account: str) -> list[Any]:
    return [
        event
        for event in admin.iter_audit_events(account)
        if event.action == pb.AUDIT_ACTION_KEY_LEAK_REVOKED
    ]


class TestLeakedKeys:
    def test_a_leaked_key_is_revoked_and_labelled_true_positive(
        self,
        server: ServerProcess,
        admin: KeyServiceClient,
        public: KeyServiceClient,
        new_key: NewKey,
        account: str,
        github: GitHubSigner,
    ) -> None:
        """GitHub reports a real key: the answer labels it a true positive, and by then
        Authorize refuses it as revoked, GetKey shows it revoked as leaked, and the audit
        trail records the leak with the URL it was found at, by GitHub secret scanning."""
        created = new_key()
        assert verdict(public.authorize(created.secret)) == ALLOWED
        body = alert(finding(created.secret, url=URL))

        answer = post(server, body, github.headers(body))

        assert answer == Answer(200, [feedback(created.secret, "true_positive")])
        assert verdict(public.authorize(created.secret)) == REVOKED
        key = admin.get_key(account, created.key.id)
        assert key.status == pb.KEY_STATUS_REVOKED
        assert key.revocation_reason == "leaked"
        [leak] = leak_events(admin, account)
        assert (leak.key_id, leak.actor, leak.reason) == (
            created.key.id,
            "github-secret-scanning",
            URL,
        )
        assert LOOPBACK_PEER.fullmatch(leak.peer), leak.peer
        assert created.secret not in server.read_log()

    def test_a_key_reported_again_is_still_a_true_positive(
        self,
        server: ServerProcess,
        admin: KeyServiceClient,
        new_key: NewKey,
        account: str,
        github: GitHubSigner,
    ) -> None:
        """GitHub may report a key twice (another commit, a retry): still a true positive,
        and the audit trail keeps the first leak only."""
        created = new_key()
        first = alert(finding(created.secret, url=URL))
        second = alert(finding(created.secret, url="https://gist.github.com/octocat/1"))

        answers = [post(server, body, github.headers(body)) for body in (first, second)]

        assert answers == [Answer(200, [feedback(created.secret, "true_positive")])] * 2
        assert [event.reason for event in leak_events(admin, account)] == [URL]

    def test_one_alert_revokes_keys_of_several_accounts_each_with_its_url(
        self,
        server: ServerProcess,
        admin: KeyServiceClient,
        public: KeyServiceClient,
        new_key: NewKey,
        account: str,
        github: GitHubSigner,
    ) -> None:
        """A leak is any account's: each key is revoked, and each account's trail shows where
        its own key was found."""
        other_account = f"{account}_b"
        mine, theirs = new_key(), new_key(mode="test", account_id=other_account)
        urls = ("https://github.com/o/a/blob/1/.env", "https://github.com/o/b/blob/2/config.py")
        body = alert(finding(mine.secret, url=urls[0]), finding(theirs.secret, url=urls[1]))

        answer = post(server, body, github.headers(body))

        assert answer.body == [
            feedback(mine.secret, "true_positive"),
            feedback(theirs.secret, "true_positive"),
        ]
        assert [verdict(public.authorize(k.secret)) for k in (mine, theirs)] == [REVOKED] * 2
        assert [e.reason for e in leak_events(admin, account)] == [urls[0]]
        assert [e.reason for e in leak_events(admin, other_account)] == [urls[1]]


class TestFalsePositives:
    def test_keys_keysvc_never_issued_revoke_nothing(
        self,
        server: ServerProcess,
        admin: KeyServiceClient,
        public: KeyServiceClient,
        new_key: NewKey,
        account: str,
        github: GitHubSigner,
    ) -> None:
        """A made-up key, a real key id with a wrong secret, a real key with one character
        changed and another service's token are false positives, in the order sent; the
        real key they resemble keeps working and its trail shows no leak."""
        created = new_key()
        tokens = [
            made_up_key(),
            wrong_secret(created.key.id),
            created.secret[:-1] + ("A" if created.secret[-1] != "A" else "B"),
            "ghp_" + secrets.token_urlsafe(27),
        ]
        body = alert(*(finding(token) for token in tokens))

        answer = post(server, body, github.headers(body))

        assert answer == Answer(200, [feedback(token, "false_positive") for token in tokens])
        assert verdict(public.authorize(created.secret)) == ALLOWED
        assert admin.get_key(account, created.key.id).status == pb.KEY_STATUS_ACTIVE
        assert leak_events(admin, account) == []
        log = server.read_log()
        assert not [token for token in tokens if token in log]

    def test_real_and_false_findings_in_one_alert(
        self,
        server: ServerProcess,
        public: KeyServiceClient,
        new_key: NewKey,
        github: GitHubSigner,
    ) -> None:
        real, untouched = new_key(), new_key()
        tokens = [made_up_key("test"), real.secret, wrong_secret(untouched.key.id)]
        body = alert(*(finding(token) for token in tokens))

        answer = post(server, body, github.headers(body))

        assert [item["label"] for item in answer.body] == [
            "false_positive",
            "true_positive",
            "false_positive",
        ]
        assert verdict(public.authorize(real.secret)) == REVOKED
        assert verdict(public.authorize(untouched.secret)) == ALLOWED


class TestForgedAndMalformedAlerts:
    """None of these revokes anything: the key stays allowed and its trail shows no leak."""

    @pytest.fixture
    def key(self, new_key: NewKey) -> Any:
        return new_key()

    @pytest.fixture(autouse=True)
    def nothing_revoked(
        self, key: Any, admin: KeyServiceClient, public: KeyServiceClient, account: str
    ) -> Iterator[None]:
        yield
        assert verdict(public.authorize(key.secret)) == ALLOWED
        assert leak_events(admin, account) == []

    def test_a_forged_signature_is_403(
        self, server: ServerProcess, key: Any, github: GitHubSigner
    ) -> None:
        """Signed with a key pair GitHub never published, claiming GitHub's key identifier."""
        body = alert(finding(key.secret))
        forger = GitHubSigner.new()

        answer = post(server, body, forger.headers(body, key_identifier=github.key_identifier))

        assert answer.status == 403
        assert "does not verify the body" in answer.body["error"]

    def test_a_body_changed_in_transit_is_403(
        self, server: ServerProcess, key: Any, github: GitHubSigner
    ) -> None:
        """GitHub signed an alert about a made-up key; the body sent names a real one."""
        signed = alert(finding(made_up_key()))

        answer = post(server, alert(finding(key.secret)), github.headers(signed))

        assert answer.status == 403

    def test_an_unknown_key_identifier_is_403(self, server: ServerProcess, key: Any) -> None:
        body = alert(finding(key.secret))
        stranger = GitHubSigner.new()

        answer = post(server, body, stranger.headers(body))

        assert answer.status == 403
        assert stranger.key_identifier in answer.body["error"]

    def test_an_unsigned_alert_is_400(self, server: ServerProcess, key: Any) -> None:
        answer = post(server, alert(finding(key.secret)), {"Content-Type": "application/json"})

        assert answer == Answer(
            400, {"error": "Github-Public-Key-Identifier: required header is missing"}
        )

    def test_a_signed_body_of_the_wrong_shape_is_400_naming_the_field(
        self, server: ServerProcess, key: Any, github: GitHubSigner
    ) -> None:
        body = json.dumps([{"token": key.secret, "type": "t"}, {"token": ["x"]}]).encode()

        answer = post(server, body, github.headers(body))

        assert answer == Answer(400, {"error": "body[1].token: required, a string, got an array"})

    def test_a_body_over_a_mebibyte_is_413_before_it_is_read(
        self, server: ServerProcess, key: Any, github: GitHubSigner
    ) -> None:
        """The headers announce 2 MiB and no byte of the body follows: the answer comes at
        once, from the Content-Length alone."""
        parts = urlsplit(http_base(server))
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        try:
            connection.putrequest("POST", PATH)
            headers = github.headers(b"[]")
            headers["Content-Length"] = str(2 * 1024 * 1024)
            for name, value in headers.items():
                connection.putheader(name, value)
            connection.endheaders()
            response = connection.getresponse()
            answer = Answer(response.status, json.loads(response.read()))
        finally:
            connection.close()

        assert answer == Answer(
            413, {"error": "body: at most 1048576 bytes, Content-Length says 2097152"}
        )

    @pytest.mark.parametrize(("method", "path", "status"), [("GET", PATH, 405), ("POST", "/", 404)])
    def test_only_post_to_the_endpoint_is_served(
        self, server: ServerProcess, key: Any, method: str, path: str, status: int
    ) -> None:
        request = urllib.request.Request(http_base(server) + path, data=b"[]", method=method)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        with refused.value as err:
            assert err.code == status


class TestTheListener:
    @pytest.fixture
    def servers(self, tmp_path: Path) -> Iterator[ServerFactory]:
        """Servers of the test's own, on the embedded default."""
        factory = ServerFactory(tmp_path)
        yield factory
        factory.close()

    def test_the_address_file_names_both_listeners(self, server: ServerProcess) -> None:
        """The gRPC address on the first line, as ever; the HTTP listener's URL on the second."""
        grpc_address, http_url = server.address_path.read_text().splitlines()

        assert grpc_address == server.target
        assert http_url.startswith("http://127.0.0.1:")
        assert f"GitHub secret scanning on {http_url}{PATH}" in server.read_log()

    @pytest.mark.parametrize(
        ("args", "problem"),
        [
            (("--http-listen", "0.0.0.0:0", "--github-keys-file", "KEYS"), "without TLS"),
            (("--http-listen", "127.0.0.1:0"), "needs --github-keys-file"),
            (("--github-keys-file", "KEYS"), "give --http-listen HOST:PORT too"),
            (("--http-listen", "127.0.0.1:0", "--github-keys-file", "MISSING"), "cannot read"),
        ],
    )
    def test_what_cannot_work_is_refused_at_once(
        self, tmp_path: Path, github: GitHubSigner, args: tuple[str, ...], problem: str
    ) -> None:
        """`keysvc serve` exits 1 before opening the database, naming the problem."""
        keys = write_keys(tmp_path, github)
        argv = [
            str(keys) if a == "KEYS" else str(tmp_path / "no.json") if a == "MISSING" else a
            for a in args
        ]

        result = subprocess.run(
            serve_command(tmp_path / "data", *argv),
            env=clean_environ(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )

        assert result.returncode == 1, result.stderr
        assert problem in result.stderr
        assert not (tmp_path / "data").exists()

    def test_a_port_already_taken_stops_the_server(
        self, tmp_path: Path, github: GitHubSigner
    ) -> None:
        """keysvc does not run without the listener it was asked for: it exits 1 naming the
        address, having stopped the gRPC listener it had started."""
        with socket.create_server(("127.0.0.1", 0)) as taken:
            listen = f"127.0.0.1:{taken.getsockname()[1]}"
            result = subprocess.run(
                serve_command(
                    tmp_path / "data",
                    "--http-listen",
                    listen,
                    "--github-keys-file",
                    str(write_keys(tmp_path, github)),
                ),
                env=clean_environ(),
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )

        assert result.returncode == 1, result.stderr
        assert f"keysvc: cannot listen on {listen} (--http-listen)" in result.stderr
        assert "shutting down" in result.stderr

    def test_with_tls_it_serves_https_with_the_grpc_certificate(
        self, servers: ServerFactory, tmp_path: Path, github: GitHubSigner
    ) -> None:
        """With --tls-cert and --tls-key, on every interface: HTTPS with the same certificate,
        trusted by a client with its CA; plaintext HTTP is not answered."""
        certificates = Certificates(tmp_path)
        server = servers.start(
            "--listen",
            "0.0.0.0:0",
            *certificates.tls_args,
            "--http-listen",
            "0.0.0.0:0",
            "--github-keys-file",
            str(write_keys(tmp_path, github)),
            credentials=certificates.credentials(),
        )
        with server.client() as admin:
            created = admin.create_key("acct_tls", "Production server", "live", ["links:read"])
        body = alert(finding(created.secret))
        trusting = ssl.create_default_context(cafile=str(certificates.ca_pem))

        assert server.http_url.startswith("https://0.0.0.0:")
        answer = post(server, body, github.headers(body), context=trusting)
        assert answer == Answer(200, [feedback(created.secret, "true_positive")])

        plain = http_base(server).replace("https://", "http://") + PATH
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            urllib.request.urlopen(
                urllib.request.Request(plain, data=body, method="POST"), timeout=10
            )
