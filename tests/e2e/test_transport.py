"""TLS and mutual TLS on the listener, and plaintext refused beyond loopback.

Certificates are made at test time (trustme): a CA the server and clients trust, a
server certificate for 127.0.0.1 and localhost, client certificates with given common
names, and a second CA that nothing here trusts. Transport does not depend on storage,
so these servers run on the embedded default only. All traffic stays on loopback.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
from keysvc_client import (
    KeyServiceClient,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from keysvc_client import aio as keysvc_aio

from .harness import (
    COMMAND_TIMEOUT,
    ServerFactory,
    ServerProcess,
    clean_environ,
    serve_command,
    verdict,
)

pytestmark = pytest.mark.slow

TIMEOUT = 10.0
# The name the server certificate holds besides 127.0.0.1 and localhost.
SERVER_NAME = "keysvc.test"


@dataclass(frozen=True)
class ClientCertificate:
    cert: Path
    key: Path


class Certificates:
    """PEM files under `directory`, issued by `ca` (trusted) or by `other_ca` (not)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = trustme.CA()
        self.other_ca = trustme.CA()
        self.ca_pem = self._write("ca.pem", self.ca.cert_pem.bytes())
        self.other_ca_pem = self._write("other-ca.pem", self.other_ca.cert_pem.bytes())
        server = self.ca.issue_cert("127.0.0.1", "localhost", SERVER_NAME)
        self.server_cert = self._write(
            "server.pem", b"".join(blob.bytes() for blob in server.cert_chain_pems)
        )
        self.server_key = self._write("server-key.pem", server.private_key_pem.bytes())

    def client(
        self, common_name: str, *, san: str = "client.test", trusted: bool = True
    ) -> ClientCertificate:
        """A client certificate with `common_name` and the DNS name `san`."""
        ca = self.ca if trusted else self.other_ca
        leaf = ca.issue_cert(san, common_name=common_name)
        stem = f"{common_name}-{san}-{'ca' if trusted else 'other-ca'}"
        return ClientCertificate(
            cert=self._write(f"{stem}.pem", b"".join(b.bytes() for b in leaf.cert_chain_pems)),
            key=self._write(f"{stem}-key.pem", leaf.private_key_pem.bytes()),
        )

    @property
    def tls_args(self) -> tuple[str, ...]:
        return ("--tls-cert", str(self.server_cert), "--tls-key", str(self.server_key))

    def credentials(self, client: ClientCertificate | None = None) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem.read_bytes(),
            private_key=client.key.read_bytes() if client else None,
            certificate_chain=client.cert.read_bytes() if client else None,
        )

    def _write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        return path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def module_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Servers shared by a module's tests, on the embedded default."""
    factory = ServerFactory(tmp_path_factory.mktemp("transport"))
    yield factory
    factory.close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[ServerFactory]:
    """Servers of the test's own, on the embedded default."""
    factory = ServerFactory(tmp_path)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def tls_server(module_servers: ServerFactory, certificates: Certificates) -> ServerProcess:
    """A server with --tls-cert and --tls-key: TLS, no client certificates."""
    return module_servers.start(*certificates.tls_args, credentials=certificates.credentials())


@pytest.fixture(scope="module")
def mtls_server(
    module_servers: ServerFactory,
    certificates: Certificates,
    tmp_path_factory: pytest.TempPathFactory,
) -> ServerProcess:
    """A mutual-TLS server whose callers file names callers by certificate."""
    callers = tmp_path_factory.mktemp("mtls") / "callers.toml"
    callers.write_text(
        "[[callers]]\n"
        'name = "api-eu-1"\nrole = "authorizer"\nclient_identity = "api-eu-1"\n'
        "[[callers]]\n"
        'name = "api-us-1"\nrole = "authorizer"\nclient_identity = "api-us-1.clients.test"\n'
        "[[callers]]\n"
        'name = "ops"\nrole = "admin"\nclient_identity = "ops-console"\n'
    )
    admin = certificates.client("ops-console")
    return module_servers.start(
        *certificates.tls_args,
        "--tls-client-ca",
        str(certificates.ca_pem),
        "--callers",
        str(callers),
        credentials=certificates.credentials(admin),
    )


def mtls_client(
    server: ServerProcess,
    certificates: Certificates,
    common_name: str,
    *,
    san: str = "client.test",
    trusted: bool = True,
) -> KeyServiceClient:
    """A client of `server` presenting a certificate with `common_name` (PEM as bytes)."""
    client = certificates.client(common_name, san=san, trusted=trusted)
    return KeyServiceClient(
        server.target,
        timeout=TIMEOUT,
        tls_ca=certificates.ca_pem.read_bytes(),
        tls_cert=client.cert.read_bytes(),
        tls_key=client.key.read_bytes(),
    )


class TestTls:
    def test_a_tls_client_is_answered(
        self, tls_server: ServerProcess, certificates: Certificates
    ) -> None:
        """A client given tls_ca (a file path) creates and authorizes a key over TLS."""
        with KeyServiceClient(
            tls_server.target,
            admin_token=tls_server.admin_token,
            timeout=TIMEOUT,
            tls_ca=certificates.ca_pem,
        ) as client:
            created = client.create_key("acct_tls", "n", "live", ["links:read"])
            decision = client.authorize(created.secret, ["links:read"])

        assert verdict(decision) == (200, "REASON_ALLOWED")

    def test_the_asyncio_client_is_answered(
        self, tls_server: ServerProcess, certificates: Certificates
    ) -> None:
        """The asyncio client given tls_ca (PEM bytes) is answered over TLS."""

        async def scopes() -> int:
            async with keysvc_aio.KeyServiceClient(
                tls_server.target,
                admin_token=tls_server.admin_token,
                timeout=TIMEOUT,
                tls_ca=certificates.ca_pem.read_bytes(),
            ) as client:
                return len(await client.list_scopes())

        assert asyncio.run(scopes()) == 9

    def test_a_server_name_other_than_the_target(
        self, tls_server: ServerProcess, certificates: Certificates
    ) -> None:
        """tls_server_name checks the certificate for that name instead of the target's host."""
        with KeyServiceClient(
            tls_server.target,
            timeout=TIMEOUT,
            tls_ca=certificates.ca_pem,
            tls_server_name=SERVER_NAME,
        ) as client:
            assert verdict(client.authorize("garbage")) == (401, "REASON_MALFORMED")

        with (
            KeyServiceClient(
                tls_server.target,
                timeout=TIMEOUT,
                tls_ca=certificates.ca_pem,
                tls_server_name="not-keysvc.test",
            ) as client,
            pytest.raises(Unavailable),
        ):
            client.authorize("garbage")

    @pytest.mark.parametrize("how", ["flag", "environment"])
    def test_the_cli_with_the_ca(
        self, tls_server: ServerProcess, certificates: Certificates, how: str
    ) -> None:
        """The CLI reaches a TLS server given --tls-ca or $KEYSVC_TLS_CA."""
        if how == "flag":
            result = tls_server.cli("scopes", "--tls-ca", str(certificates.ca_pem))
        else:
            result = tls_server.cli("scopes", env={"KEYSVC_TLS_CA": str(certificates.ca_pem)})

        assert result.returncode == 0, result.stderr
        assert "links:read" in result.stdout

    def test_the_cli_without_the_ca_cannot_talk_to_it(self, tls_server: ServerProcess) -> None:
        """The CLI in plaintext gets no answer from a TLS server, and exits 2."""
        result = tls_server.cli("scopes", "--timeout", "5")

        assert result.returncode == 2
        assert "UNAVAILABLE" in result.stderr

    def test_a_plaintext_client_cannot_talk_to_it(self, tls_server: ServerProcess) -> None:
        """A plaintext client's call to a TLS server fails as UNAVAILABLE."""
        with (
            KeyServiceClient(
                tls_server.target, admin_token=tls_server.admin_token, timeout=TIMEOUT
            ) as client,
            pytest.raises(Unavailable),
        ):
            client.list_scopes()

    def test_a_client_trusting_another_ca_is_refused(
        self, tls_server: ServerProcess, certificates: Certificates
    ) -> None:
        """A client that does not trust the server certificate's CA refuses the connection."""
        with (
            KeyServiceClient(
                tls_server.target, timeout=TIMEOUT, tls_ca=certificates.other_ca_pem
            ) as client,
            pytest.raises(Unavailable),
        ):
            client.authorize("garbage")


class TestMutualTls:
    def test_a_client_without_a_certificate_is_refused(
        self, mtls_server: ServerProcess, certificates: Certificates
    ) -> None:
        """Without a client certificate the handshake fails: UNAVAILABLE, before any RPC."""
        with (
            KeyServiceClient(
                mtls_server.target, timeout=TIMEOUT, tls_ca=certificates.ca_pem
            ) as client,
            pytest.raises(Unavailable),
        ):
            client.authorize("garbage")

    def test_a_certificate_from_another_ca_is_refused(
        self, mtls_server: ServerProcess, certificates: Certificates
    ) -> None:
        """A client certificate the server's --tls-client-ca did not sign fails the handshake."""
        with (
            mtls_client(mtls_server, certificates, "ops-console", trusted=False) as client,
            pytest.raises(Unavailable),
        ):
            client.list_scopes()

    def test_an_authorizer_certificate_may_authorize_only(
        self, mtls_server: ServerProcess, certificates: Certificates
    ) -> None:
        """A certificate whose common name is an authorizer's client_identity may call
        Authorize, and is PERMISSION_DENIED on CreateKey."""
        with mtls_client(mtls_server, certificates, "api-eu-1") as client:
            decision = client.authorize("garbage")
            with pytest.raises(PermissionDenied) as denied:
                client.create_key("acct_mtls", "n", "live", ["links:read"])

        assert verdict(decision) == (401, "REASON_MALFORMED")
        assert "api-eu-1" in denied.value.details

    def test_an_admin_certificate_may_do_everything(
        self, mtls_server: ServerProcess, certificates: Certificates
    ) -> None:
        """A certificate whose common name is an admin's client_identity may call every RPC."""
        with mtls_client(mtls_server, certificates, "ops-console") as client:
            created = client.create_key("acct_mtls_admin", "n", "live", ["links:read"])
            allowed = client.authorize(created.secret, ["links:read"])
            listed = [key.id for key in client.list_keys("acct_mtls_admin").keys]
            revoked = client.revoke_key("acct_mtls_admin", created.key.id)
            fetched = client.get_key("acct_mtls_admin", created.key.id)
            scopes = client.list_scopes()

        assert verdict(allowed) == (200, "REASON_ALLOWED")
        assert listed == [created.key.id]
        assert revoked.revoked_at == fetched.revoked_at
        assert fetched.HasField("revoked_at")
        assert len(scopes) == 9

    def test_a_wrong_token_is_not_excused_by_an_admin_certificate(
        self, mtls_server: ServerProcess, certificates: Certificates
    ) -> None:
        """A request carrying a wrong token is UNAUTHENTICATED even with an admin's certificate."""
        client = certificates.client("ops-console", san="client.test", trusted=True)
        with (
            KeyServiceClient(
                mtls_server.target,
                timeout=TIMEOUT,
                admin_token="kst_not-a-token-keysvc-knows",
                tls_ca=certificates.ca_pem.read_bytes(),
                tls_cert=client.cert.read_bytes(),
                tls_key=client.key.read_bytes(),
            ) as keysvc,
            pytest.raises(Unauthenticated),
        ):
            keysvc.list_scopes()

    def test_a_subject_alternative_name_names_the_caller(
        self, mtls_server: ServerProcess, certificates: Certificates
    ) -> None:
        """A certificate is recognised by a DNS name (SAN) as well as by its common name."""
        with mtls_client(
            mtls_server, certificates, "unlisted-cn", san="api-us-1.clients.test"
        ) as client:
            decision = client.authorize("garbage")
            with pytest.raises(PermissionDenied):
                client.list_scopes()

        assert verdict(decision) == (401, "REASON_MALFORMED")

    def test_a_valid_certificate_keysvc_does_not_know_is_unauthenticated(
        self, mtls_server: ServerProcess, certificates: Certificates
    ) -> None:
        """A certificate from the right CA whose names are in no callers entry is
        UNAUTHENTICATED, on Authorize as on admin RPCs."""
        with mtls_client(mtls_server, certificates, "stranger") as client:
            with pytest.raises(Unauthenticated):
                client.authorize("garbage")
            with pytest.raises(Unauthenticated):
                client.list_scopes()

    def test_the_cli_with_a_client_certificate(
        self, mtls_server: ServerProcess, certificates: Certificates
    ) -> None:
        """The CLI presents its client certificate ($KEYSVC_TLS_CLIENT_CERT and _KEY) as its
        only credential, and gets that caller's role."""
        admin = certificates.client("ops-console")
        authorizer = certificates.client("api-eu-1")

        def cli(cert: Path, key: Path, *args: str) -> subprocess.CompletedProcess[str]:
            # No credential but the certificate: an empty data directory.
            return mtls_server.cli(
                *args,
                "--tls-ca",
                str(certificates.ca_pem),
                env={
                    "KEYSVC_TLS_CLIENT_CERT": str(cert),
                    "KEYSVC_TLS_CLIENT_KEY": str(key),
                    "KEYSVC_DATA_DIR": str(certificates.directory / "no-data-dir"),
                },
            )

        authorized = cli(authorizer.cert, authorizer.key, "authorize", "garbage")
        denied = cli(authorizer.cert, authorizer.key, "keys", "list", "--account", "a")

        assert authorized.returncode == 1, authorized.stderr
        assert authorized.stdout.startswith("401 MALFORMED")
        assert denied.returncode == 2
        assert "PERMISSION_DENIED" in denied.stderr
        listed = cli(admin.cert, admin.key, "scopes")
        assert listed.returncode == 0, listed.stderr
        assert "links:read" in listed.stdout


class TestNonLoopbackListener:
    @pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0"])
    def test_plaintext_is_refused_at_once(self, tmp_path: Path, listen: str) -> None:
        """`keysvc serve` on every interface without TLS exits 1 before doing anything,
        naming TLS and --insecure."""
        started = time.monotonic()
        result = subprocess.run(
            serve_command(tmp_path / "data", listen=listen),
            env=clean_environ(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )

        assert result.returncode == 1, result.stderr
        assert time.monotonic() - started < 15
        assert "TLS" in result.stderr
        assert "--insecure" in result.stderr
        assert not (tmp_path / "data").exists()

    def test_insecure_starts_in_plaintext(self, servers: ServerFactory) -> None:
        """With --insecure it serves plaintext on 0.0.0.0 (reached here over 127.0.0.1)."""
        server = servers.start("--listen", "0.0.0.0:0", "--insecure")

        with server.client() as client:
            assert len(client.list_scopes()) == 9
        assert "clear text" in server.read_log()

    def test_tls_starts(self, servers: ServerFactory, certificates: Certificates) -> None:
        """With --tls-cert and --tls-key it serves TLS on 0.0.0.0."""
        server = servers.start(
            "--listen", "0.0.0.0:0", *certificates.tls_args, credentials=certificates.credentials()
        )

        with server.client() as client:
            assert len(client.list_scopes()) == 9
        assert "transport: TLS" in server.read_log()

    def test_beyond_loopback_authorize_needs_a_credential(self, servers: ServerFactory) -> None:
        """Authorize is open only on loopback: on 0.0.0.0 it needs a credential."""
        server = servers.start("--listen", "0.0.0.0:0", "--insecure")

        with server.client(admin=False) as anonymous, pytest.raises(Unauthenticated):
            anonymous.authorize("garbage")
        with server.client() as admin:
            assert verdict(admin.authorize("garbage")) == (401, "REASON_MALFORMED")


class TestTlsSettingsThatCannotWork:
    @pytest.mark.parametrize(
        ("args", "named"),
        [
            (("--tls-cert", "{cert}"), "--tls-key"),
            (("--tls-key", "{key}"), "--tls-cert"),
            (("--tls-client-ca", "{ca}"), "--tls-cert"),
            (("--tls-cert", "{missing}", "--tls-key", "{key}"), "missing.pem"),
            (("--tls-cert", "{key}", "--tls-key", "{key}"), "--tls-cert"),
            (("--tls-cert", "{cert}", "--tls-key", "{cert}"), "--tls-key"),
        ],
        ids=["cert-only", "key-only", "client-ca-only", "unreadable", "not-a-cert", "not-a-key"],
    )
    def test_are_refused_at_start(
        self, tmp_path: Path, certificates: Certificates, args: tuple[str, ...], named: str
    ) -> None:
        """Incomplete or unusable TLS files stop `keysvc serve` with a message naming them."""
        paths = {
            "cert": certificates.server_cert,
            "key": certificates.server_key,
            "ca": certificates.ca_pem,
            "missing": tmp_path / "missing.pem",
        }
        result = subprocess.run(
            serve_command(tmp_path / "data", *(a.format(**paths) for a in args)),
            env=clean_environ(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )

        assert result.returncode != 0
        assert named in result.stderr.splitlines()[-1]


class TestClientTlsArguments:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"tls_cert": "{cert}"}, "both tls_cert and tls_key"),
            ({"tls_key": "{key}"}, "both tls_cert and tls_key"),
            ({"tls_ca": "{ca}", "credentials": "ssl"}, "not both"),
            ({"tls_ca": "{missing}"}, "cannot read tls_ca"),
            ({"tls_ca": "{ca_text}"}, "pass it as bytes"),
            ({"tls_ca": b"not pem"}, "tls_ca is not PEM"),
            ({"tls_server_name": "keysvc.test"}, "tls_server_name needs TLS"),
        ],
        ids=[
            "cert-without-key",
            "key-without-cert",
            "files-and-credentials",
            "unreadable-ca",
            "pem-text-as-str",
            "not-pem",
            "server-name-in-plaintext",
        ],
    )
    @pytest.mark.parametrize("flavour", ["sync", "asyncio"])
    def test_mistakes_fail_at_construction(
        self,
        certificates: Certificates,
        tmp_path: Path,
        kwargs: dict[str, object],
        message: str,
        flavour: str,
    ) -> None:
        """TLS arguments that cannot work raise ValueError naming the problem, before any call."""
        values = {
            "{cert}": str(certificates.server_cert),
            "{key}": str(certificates.server_key),
            "{ca}": str(certificates.ca_pem),
            "{missing}": str(tmp_path / "missing.pem"),
            "{ca_text}": certificates.ca_pem.read_text(),
        }
        arguments: dict[str, object] = {
            name: values.get(value, value) if isinstance(value, str) else value
            for name, value in kwargs.items()
        }
        if arguments.get("credentials") == "ssl":
            arguments["credentials"] = grpc.ssl_channel_credentials()

        async def construct() -> None:
            keysvc_aio.KeyServiceClient("127.0.0.1:1", **arguments)  # type: ignore[arg-type]

        with pytest.raises(ValueError, match=re.escape(message)):
            if flavour == "sync":
                KeyServiceClient("127.0.0.1:1", **arguments)  # type: ignore[arg-type]
            else:
                asyncio.run(construct())
