"""The Guard an API server keeps: verdicts from a real keysvc, deadlines, retries only where
safe, credentials and TLS as keysvc's callers need them, and the same names in both flavours.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from keysvc_client import (
    Guard,
    KeyContext,
    KeyServiceClient,
    Unavailable,
    Verdict,
    aio,
    keysvc_pb2,
    keysvc_pb2_grpc,
)

from tests.e2e.harness import NEAR_CACHE_GRACE, ServerFactory, ServerProcess, poll, with_checksum

from .conftest import TIMEOUT, Keys

pytestmark = pytest.mark.slow

pb = keysvc_pb2

# "Within about a second" of keysvc's return, as the docs promise: gRPC's reconnect backoff is
# capped at 1 s with up to 20 % jitter.
RECONNECT = 1.5


class TestVerdicts:
    def test_an_allowed_key_comes_with_its_context(self, server: ServerProcess, keys: Keys) -> None:
        created = keys.new(["links:read", "links:write"], mode="test")
        with Guard(server.target, timeout=TIMEOUT) as guard:
            verdict = guard.check(f"Bearer {created.secret}", ["links:read"])
        assert verdict.allowed
        assert (verdict.status, verdict.reason) == (200, "allowed")
        assert verdict.key == KeyContext(
            key_id=created.key.id,
            account_id=keys.account,
            mode="test",
            scopes=("links:read", "links:write"),
        )

    def test_refusals_name_their_reason(self, server: ServerProcess, keys: Keys) -> None:
        revoked = keys.new()
        keys.revoke(revoked)
        with Guard(server.target, timeout=TIMEOUT, required_mode="live") as guard:
            got = {
                "none": guard.check(None),
                "blank": guard.check("  "),
                "malformed": guard.check("Bearer ck_live_nope"),
                "revoked": guard.check(revoked.secret),
                "scope": guard.check(keys.bearer(["links:read"]), ["links:read", "links:write"]),
                "mode": guard.check(keys.bearer(mode="test")),
            }
        assert {name: (v.status, v.reason) for name, v in got.items()} == {
            "none": (401, "missing"),
            "blank": (401, "missing"),
            "malformed": (401, "malformed"),
            "revoked": (401, "revoked"),
            "scope": (403, "insufficient_scope"),
            "mode": (403, "wrong_mode"),
        }
        assert got["scope"].missing_scopes == ("links:write",)
        # A recognised key is described even when refused; an unrecognised one is not.
        assert got["revoked"].key is not None and got["malformed"].key is None
        assert not any(v.allowed for v in got.values())

    def test_the_asyncio_guard_has_the_same_names_and_verdicts(
        self, server: ServerProcess, keys: Keys
    ) -> None:
        header, read_only = keys.bearer(["links:read"]), keys.bearer(["links:read"])

        async def checks() -> list[Verdict]:
            async with aio.Guard(server.target, timeout=TIMEOUT, required_mode="live") as guard:
                return [
                    await guard.check(header, ["links:read"]),
                    await guard.check(read_only, ["links:write"]),
                ]

        with Guard(server.target, timeout=TIMEOUT, required_mode="live") as guard:
            expected = [
                guard.check(header, ["links:read"]),
                guard.check(read_only, ["links:write"]),
            ]
        assert asyncio.run(checks()) == expected
        assert [v.status for v in expected] == [200, 403]
        public = {n for n in dir(Guard) if not n.startswith("_")}
        assert public == {n for n in dir(aio.Guard) if not n.startswith("_")}

    def test_an_asyncio_guard_built_outside_any_loop_serves_every_loop(
        self, server: ServerProcess, keys: Keys
    ) -> None:
        """Built at import time, used by one event loop and then another (as test clients do)."""
        guard = aio.Guard(server.target, timeout=TIMEOUT)
        header = keys.bearer()
        assert asyncio.run(guard.check(header)).allowed
        assert asyncio.run(guard.check(header)).allowed

    def test_an_unknown_scope_is_this_servers_mistake_500(
        self, server: ServerProcess, keys: Keys, caplog: pytest.LogCaptureFixture
    ) -> None:
        """keysvc refuses an unknown required scope: never 200, and logged for the developer."""
        created = keys.new()
        with Guard(server.target, timeout=TIMEOUT) as guard:
            verdict = guard.check(f"Bearer {created.secret}", ["links:delete"])
        assert (verdict.status, verdict.reason) == (500, "misconfigured")
        assert "links:delete" in caplog.text
        assert created.secret not in caplog.text


class TestDeadline:
    def test_the_default_deadline_is_well_under_100_ms(self) -> None:
        assert Guard("127.0.0.1:1").timeout == aio.Guard("127.0.0.1:1").timeout == 0.05

    def test_a_frozen_keysvc_costs_one_deadline(self, servers: ServerFactory) -> None:
        """keysvc holds the connection but answers nothing: 503 once the 50 ms are up."""
        frozen = servers.start()
        with frozen.client() as admin:
            created = admin.create_key("acct_frozen", "f", "live", ["links:read"])
        with Guard(frozen.target) as guard:
            assert guard.wait_ready()
            frozen.process.send_signal(signal.SIGSTOP)
            try:
                started = time.monotonic()
                verdict = guard.check(created.secret)
                elapsed = time.monotonic() - started
            finally:
                frozen.process.send_signal(signal.SIGCONT)
        assert (verdict.status, verdict.reason) == (503, "unavailable")
        assert 0.05 <= elapsed < 1.0

    def test_keysvc_down_never_raises(self, nowhere: str) -> None:
        with Guard(nowhere) as guard:
            verdicts = [guard.check(f"Bearer ck_live_{n}") for n in range(3)]
        assert {(v.status, v.reason) for v in verdicts} == {(503, "unavailable")}
        assert verdicts[0].headers()["Retry-After"] == "1"

    def test_another_5xx_may_be_chosen_but_nothing_else(self, nowhere: str) -> None:
        """Fail-open is not offered: keysvc's silence can only be answered with a server error."""
        with Guard(nowhere, unavailable_status=500) as guard:
            assert guard.check("Bearer x").status == 500
        for status in (200, 204, 401, 403, 404, 600):
            with pytest.raises(ValueError, match="5xx"):
                Guard(nowhere, unavailable_status=status)

    @pytest.mark.parametrize("timeout", [0, -1, math.inf, math.nan])
    def test_a_deadline_must_be_positive(self, timeout: float) -> None:
        with pytest.raises(ValueError, match="timeout"):
            Guard("127.0.0.1:1", timeout=timeout)


class TestReconnect:
    def test_after_a_long_outage_keysvc_is_found_within_about_a_second(
        self, servers: ServerFactory
    ) -> None:
        """Both Guards keep their channel through an outage long enough for gRPC's reconnect
        backoff to grow (its default would wait seconds more) and answer 200 again within
        about a second of keysvc's return, without a restart."""
        first = servers.start()
        with first.client() as admin:
            created = admin.create_key("acct_outage", "k", "live", ["links:read"])
        header = f"Bearer {created.secret}"
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        blocking, asyncio_guard = (
            Guard(first.target, timeout=1.0),
            aio.Guard(first.target, timeout=1.0),
        )

        # An unknown key id is answered without an argon2 verification: what is timed is the
        # Guards finding keysvc, not keysvc's first look at a key.
        unknown = f"Bearer {with_checksum('ck_live_' + 'Zz9' * 4 + 'q' * 32)}"

        def statuses(header: str = header) -> tuple[int, int]:
            later = asyncio.run_coroutine_threadsafe(asyncio_guard.check(header), loop)
            return blocking.check(header).status, later.result(TIMEOUT).status

        try:
            assert statuses() == (200, 200)
            assert first.stop() == 0
            outage_ends = time.monotonic() + 5.0
            # The near caches may allow the hot key until their lease runs out; from then on
            # keysvc's silence is a 503 from both, throughout the outage.
            poll(
                lambda: statuses() == (503, 503),
                timeout=NEAR_CACHE_GRACE,
                what="503 from both Guards once the lease ran out",
            )
            while time.monotonic() < outage_ends:
                assert statuses() == (503, 503)
                time.sleep(0.2)
            servers.start("--listen", first.target, data_dir=first.data_dir)
            back = time.monotonic()
            poll(lambda: statuses(unknown) == (401, 401), timeout=RECONNECT, what="both Guards")
            assert time.monotonic() - back < RECONNECT
            assert statuses() == (200, 200)
        finally:
            blocking.close()
            asyncio.run_coroutine_threadsafe(asyncio_guard.close(), loop).result(TIMEOUT)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(TIMEOUT)
            loop.close()


# Run in a process of its own: fork() from pytest's would copy its threads' half-held locks.
FORKED_GUARD = """
import json, os, sys
from keysvc_client import Guard

target, parent_key, child_key = sys.argv[1:4]
guard = Guard(target, timeout=5.0)
assert guard.check(parent_key).allowed  # the parent's channel exists and is connected


def key_ids(header):
    verdicts = [guard.check(header) for _ in range(50)]
    return sorted({v.key.key_id if v.allowed else v.reason for v in verdicts})


read, write = os.pipe()
child = os.fork()
if child == 0:
    os.close(read)
    os.write(write, json.dumps(key_ids(child_key)).encode())
    os._exit(0)
os.close(write)
seen = {"parent": key_ids(parent_key)}
with os.fdopen(read) as pipe:
    seen["child"] = json.loads(pipe.read() or "null")
os.waitpid(child, 0)
print(json.dumps(seen))
"""


class TestFork:
    def test_a_guard_used_before_fork_serves_parent_and_child(
        self, server: ServerProcess, keys: Keys
    ) -> None:
        """A pre-forking server's master used the Guard; after fork() the worker and the
        master check keys at the same time, each getting its own key's verdicts."""
        parent, child = keys.new(), keys.new()
        process = subprocess.Popen(
            [sys.executable, "-c", FORKED_GUARD, server.target, parent.secret, child.secret],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # the forked child too, to end both if they hang
        )
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise AssertionError("a Guard used across fork() hung") from None
        assert process.returncode == 0, err
        assert json.loads(out) == {"parent": [parent.key.id], "child": [child.key.id]}


class ScriptedKeysvc(keysvc_pb2_grpc.KeyServiceServicer):
    """A stand-in keysvc that fails on cue and counts every call.

    Real keysvc answers UNAVAILABLE only when its backends fail; counting the attempts of one
    client call needs a server that fails exactly as often as the test says.
    """

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.failures = 0
        self.code = grpc.StatusCode.UNAVAILABLE
        self.answer = pb.AuthorizeResponse(
            allowed=True,
            http_status=200,
            reason=pb.REASON_ALLOWED,
            key_id="KEY000000001",
            account_id="acct_fake",
            mode=pb.MODE_LIVE,
            scopes=["links:read"],
        )

    def Authorize(self, request: Any, context: grpc.ServicerContext) -> pb.AuthorizeResponse:
        self.calls["Authorize"] += 1
        if self.calls["Authorize"] <= self.failures:
            context.abort(self.code, "not now")
        return self.answer

    def CreateKey(self, request: Any, context: grpc.ServicerContext) -> pb.CreateKeyResponse:
        self.calls["CreateKey"] += 1
        context.abort(grpc.StatusCode.UNAVAILABLE, "not now")


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedKeysvc, str]]:
    fake = ScriptedKeysvc()  # type: ignore[abstract]  # the other RPCs are never called
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    keysvc_pb2_grpc.add_KeyServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield fake, f"127.0.0.1:{port}"
    server.stop(None)


HEADER = "Bearer ck_live_" + "A" * 50


class TestRetries:
    def test_unavailable_authorize_is_retried_within_the_deadline(
        self, scripted: tuple[ScriptedKeysvc, str]
    ) -> None:
        fake, target = scripted
        fake.failures = 2
        with Guard(target, timeout=TIMEOUT) as guard:
            verdict = guard.check(HEADER, ["links:read"])
        assert (verdict.status, fake.calls["Authorize"]) == (200, 3)

    def test_retries_stop_after_max_attempts(self, scripted: tuple[ScriptedKeysvc, str]) -> None:
        fake, target = scripted
        fake.failures = 10
        with Guard(target, timeout=TIMEOUT) as guard:
            assert guard.check(HEADER).status == 503
        assert fake.calls["Authorize"] == 3

    def test_max_attempts_1_turns_retries_off(self, scripted: tuple[ScriptedKeysvc, str]) -> None:
        fake, target = scripted
        fake.failures = 1
        with Guard(target, timeout=TIMEOUT, max_attempts=1) as guard:
            assert guard.check(HEADER).status == 503
        assert fake.calls["Authorize"] == 1

    def test_the_asyncio_guard_retries_too(self, scripted: tuple[ScriptedKeysvc, str]) -> None:
        fake, target = scripted
        fake.failures = 2

        async def check() -> Verdict:
            async with aio.Guard(target, timeout=TIMEOUT) as guard:
                return await guard.check(HEADER, ["links:read"])

        assert (asyncio.run(check()).status, fake.calls["Authorize"]) == (200, 3)

    @pytest.mark.parametrize(
        "code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED]
    )
    def test_other_failures_are_not_retried(
        self, scripted: tuple[ScriptedKeysvc, str], code: grpc.StatusCode
    ) -> None:
        fake, target = scripted
        fake.failures, fake.code = 1, code
        with Guard(target, timeout=TIMEOUT) as guard:
            assert guard.check(HEADER).reason == "misconfigured"
        assert fake.calls["Authorize"] == 1

    def test_retries_are_throttled_when_most_calls_fail(
        self, scripted: tuple[ScriptedKeysvc, str]
    ) -> None:
        """keysvc failing every call: after a few failures the Guard stops retrying, so an
        outage costs keysvc about one attempt per request instead of max_attempts."""
        fake, target = scripted
        fake.failures = 10_000
        calls = 30
        with Guard(target, timeout=TIMEOUT, max_attempts=3) as guard:
            verdicts = [guard.check(HEADER) for _ in range(calls)]
        assert {v.status for v in verdicts} == {503}
        # Unthrottled, every call would make 3 attempts (90). gRPC's throttle (10 tokens, each
        # failure costs one, retries stop at half) allows the first few calls their retries.
        assert calls <= fake.calls["Authorize"] <= calls + 5

    def test_create_key_is_never_retried(self, scripted: tuple[ScriptedKeysvc, str]) -> None:
        """The admin client sends CreateKey once: a retry could mint a second key."""
        fake, target = scripted
        with KeyServiceClient(target, timeout=TIMEOUT) as client, pytest.raises(Unavailable):
            client.create_key("acct_1", "once", "live", ["links:read"])
        assert fake.calls["CreateKey"] == 1


class TestDefenceInDepth:
    """An `allowed` from keysvc is checked against what was asked for before a handler runs."""

    def test_allowed_without_the_scope_is_403(self, scripted: tuple[ScriptedKeysvc, str]) -> None:
        _, target = scripted
        with Guard(target, timeout=TIMEOUT) as guard:
            verdict = guard.check(HEADER, ["links:write"])
        assert (verdict.status, verdict.missing_scopes) == (403, ("links:write",))

    def test_allowed_in_the_wrong_mode_is_403(self, scripted: tuple[ScriptedKeysvc, str]) -> None:
        _, target = scripted
        with Guard(target, timeout=TIMEOUT, required_mode="test") as guard:
            assert guard.check(HEADER).reason == "wrong_mode"

    def test_allowed_without_a_key_is_no_decision(
        self, scripted: tuple[ScriptedKeysvc, str]
    ) -> None:
        fake, target = scripted
        fake.answer = pb.AuthorizeResponse(allowed=True, http_status=200, reason=pb.REASON_ALLOWED)
        with Guard(target, timeout=TIMEOUT) as guard:
            assert guard.check(HEADER).status == 503


class TestScopesAreCheckedWhereDeclared:
    def test_a_single_string_is_refused(self) -> None:
        """check("…", "links:read") would otherwise ask for l, i, n, k, s …"""
        with Guard("127.0.0.1:1") as guard, pytest.raises(TypeError, match="single string"):
            guard.check("Bearer x", "links:read")

    @pytest.mark.parametrize("scope", ["links-read", "", "links:", "LINKS:READ", "links read"])
    def test_a_name_that_is_not_a_scope_is_refused(self, scope: str) -> None:
        with Guard("127.0.0.1:1") as guard, pytest.raises(ValueError, match="not a scope"):
            guard.check("Bearer x", [scope])


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    authorizer = "kst_" + secrets.token_urlsafe(32)
    admin = "kst_" + secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A keysvc whose callers file names an authorizer and an admin, by token."""
    base = tmp_path_factory.mktemp("callers")
    callers = base / "callers.toml"
    callers.write_text(
        f'[[callers]]\nname = "api-eu-1"\nrole = "authorizer"\n'
        f'token_sha256 = "{sha256_hex(Tokens.authorizer)}"\n'
        f'[[callers]]\nname = "ops"\nrole = "admin"\ntoken_sha256 = "{sha256_hex(Tokens.admin)}"\n'
    )
    factory = ServerFactory(base)
    yield factory.start("--callers", str(callers))
    factory.close()


class TestCredentials:
    """A keysvc with authorizers in its callers file: the Guard's token is its credential."""

    authorizer = Tokens.authorizer
    admin = Tokens.admin

    def test_the_authorizer_token_is_accepted(self, guarded: ServerProcess) -> None:
        with guarded.client(token=self.admin) as admin:
            created = admin.create_key("acct_cred", "k", "live", ["links:read"])
        with Guard(guarded.target, token=self.authorizer, timeout=TIMEOUT) as guard:
            assert guard.check(f"Bearer {created.secret}", ["links:read"]).allowed

    @pytest.mark.parametrize("token", [None, "kst_wrong"])
    def test_without_a_valid_token_the_answer_is_500_never_200(
        self, guarded: ServerProcess, token: str | None, caplog: pytest.LogCaptureFixture
    ) -> None:
        with guarded.client(token=self.admin) as admin:
            created = admin.create_key("acct_cred", "k", "live", ["links:read"])
        with Guard(guarded.target, token=token, timeout=TIMEOUT) as guard:
            verdict = guard.check(f"Bearer {created.secret}")
        assert (verdict.status, verdict.reason) == (500, "misconfigured")
        assert "UNAUTHENTICATED" in caplog.text

    def test_an_empty_token_fails_at_construction(self) -> None:
        """An unset environment variable arrives as "": say so now, not on every request."""
        with pytest.raises(ValueError, match="empty"):
            Guard("127.0.0.1:1", token="")

    def test_repr_never_shows_the_token(self) -> None:
        assert self.authorizer not in repr(Guard("127.0.0.1:1", token=self.authorizer))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    files: dict[str, Path] = {}

    def write(name: str, data: bytes) -> None:
        files[name] = base / f"{name}.pem"
        files[name].write_bytes(data)

    write("ca", ca.cert_pem.bytes())
    for name, identity in [("server", "127.0.0.1"), ("api", "api-eu-1"), ("ops", "ops")]:
        leaf = (
            ca.issue_cert(identity, "localhost")
            if name == "server"
            else ca.issue_cert(f"{identity}.clients.test", common_name=identity)
        )
        write(name, b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        write(f"{name}-key", leaf.private_key_pem.bytes())
    files["callers"] = base / "callers.toml"
    files["callers"].write_text(
        '[[callers]]\nname = "api-eu-1"\nrole = "authorizer"\nclient_identity = "api-eu-1"\n'
        '[[callers]]\nname = "ops"\nrole = "admin"\nclient_identity = "ops"\n'
    )
    return files


@pytest.fixture(scope="module")
def mtls(pki: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    factory = ServerFactory(tmp_path_factory.mktemp("mtls"))
    ops = grpc.ssl_channel_credentials(
        pki["ca"].read_bytes(), pki["ops-key"].read_bytes(), pki["ops"].read_bytes()
    )
    yield factory.start(
        "--tls-cert",
        str(pki["server"]),
        "--tls-key",
        str(pki["server-key"]),
        "--tls-client-ca",
        str(pki["ca"]),
        "--callers",
        str(pki["callers"]),
        credentials=ops,
    )
    factory.close()


class TestTls:
    """Mutual TLS: the Guard takes the TLS options KeyServiceClient takes."""

    def test_a_client_certificate_is_the_credential(
        self, mtls: ServerProcess, pki: dict[str, Path]
    ) -> None:
        ops = {"tls_ca": pki["ca"], "tls_cert": pki["ops"], "tls_key": pki["ops-key"]}
        with KeyServiceClient(mtls.target, timeout=TIMEOUT, **ops) as admin:  # type: ignore[arg-type]
            created = admin.create_key("acct_tls", "k", "test", ["links:read"])
        options: dict[str, Any] = {
            "tls_ca": pki["ca"],
            "tls_cert": pki["api"],
            "tls_key": pki["api-key"].read_bytes(),
            "timeout": TIMEOUT,
        }
        with Guard(mtls.target, **options) as guard:
            assert guard.check(f"Bearer {created.secret}", ["links:read"]).allowed

        async def check() -> bool:
            async with aio.Guard(mtls.target, **options) as guard:
                return (await guard.check(f"Bearer {created.secret}")).allowed

        assert asyncio.run(check())

    def test_without_a_client_certificate_the_handshake_fails_503(
        self, mtls: ServerProcess, pki: dict[str, Path]
    ) -> None:
        with Guard(mtls.target, tls_ca=pki["ca"], timeout=1.0) as guard:
            assert guard.check("Bearer ck_live_x").status == 503

    def test_half_a_client_certificate_fails_at_construction(self, pki: dict[str, Path]) -> None:
        with pytest.raises(ValueError, match="both tls_cert and tls_key"):
            Guard("127.0.0.1:1", tls_ca=pki["ca"], tls_cert=pki["api"])
