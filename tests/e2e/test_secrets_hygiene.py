"""No raw key, no secret and no admin token reaches the server's log or its database."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from keysvc_client import keysvc_pb2

from tests.conftest import Backend

from .harness import ServerFactory, ServerProcess, rpc_error, verdict, with_checksum

pytestmark = pytest.mark.slow

pb = keysvc_pb2
ACCOUNT = "acct_hygiene"
TIMEOUT = 10


def drive_every_path(server: ServerProcess) -> tuple[list[str], list[str]]:
    """Runs keys through success, refusal, revocation, bad input and server errors.

    Returns the raw keys created and the key ids, for the checks that follow.
    """
    with server.client() as admin, server.client(admin=False) as public:
        created = [
            admin.create_key(ACCOUNT, "Production server", "live", ["links:read", "links:write"]),
            admin.create_key(ACCOUNT, "Staging", "test", ["sessions:write"]),
            admin.create_key(ACCOUNT, "Webhooks", "live", ["webhooks:read"]),
            admin.create_key(ACCOUNT, "Rotated away", "live", ["events:read"]),
        ]
        keys = [c.secret for c in created]
        live, test, hooks, rotated = keys

        # Decisions of every kind.
        assert verdict(public.authorize(live, ["links:read"])) == (200, "REASON_ALLOWED")
        assert verdict(public.authorize(f"Bearer {test}")) == (200, "REASON_ALLOWED")
        assert verdict(public.authorize(hooks, ["webhooks:write"]))[0] == 403
        assert verdict(public.authorize(test, required_mode="live"))[0] == 403
        admin.revoke_key(ACCOUNT, created[3].key.id)
        assert verdict(public.authorize(rotated)) == (401, "REASON_REVOKED")
        wrong_secret = with_checksum(live[:20] + hooks[20:52])
        assert verdict(public.authorize(wrong_secret)) == (401, "REASON_NOT_FOUND")
        assert verdict(public.authorize(live[:-1])) == (401, "REASON_MALFORMED")
        assert verdict(public.authorize(live + " " + test)) == (401, "REASON_MALFORMED")

        # Bad input that carries a key where it does not belong, each with the status the
        # README gives it: the admin RPCs name the field, the rest are refused outright.
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        with server.channel() as channel:
            stub = server.stub(channel)
            meta = server.admin_metadata
            bad_calls: list[tuple[grpc.StatusCode, Callable[[], object]]] = [
                (
                    invalid,
                    lambda: stub.Authorize(
                        pb.AuthorizeRequest(api_key=live, required_scopes=["links:admin"]),
                        timeout=TIMEOUT,
                    ),
                ),
                (
                    invalid,
                    lambda: stub.Authorize(
                        pb.AuthorizeRequest(api_key=live, required_scopes=[test]), timeout=TIMEOUT
                    ),
                ),
                (
                    invalid,
                    lambda: stub.CreateKey(
                        pb.CreateKeyRequest(
                            account_id=ACCOUNT, name="n", mode=pb.MODE_LIVE, scopes=[live]
                        ),
                        metadata=meta,
                        timeout=TIMEOUT,
                    ),
                ),
                (
                    invalid,
                    lambda: stub.CreateKey(
                        pb.CreateKeyRequest(
                            account_id=live, name="n", mode=pb.MODE_LIVE, scopes=["x"]
                        ),
                        metadata=meta,
                        timeout=TIMEOUT,
                    ),
                ),
                (
                    invalid,
                    lambda: stub.GetKey(
                        pb.GetKeyRequest(account_id=ACCOUNT, id=live),
                        metadata=meta,
                        timeout=TIMEOUT,
                    ),
                ),
                (
                    invalid,
                    lambda: stub.RevokeKey(
                        pb.RevokeKeyRequest(account_id=ACCOUNT, id=test),
                        metadata=meta,
                        timeout=TIMEOUT,
                    ),
                ),
                (
                    invalid,
                    lambda: stub.ListKeys(
                        pb.ListKeysRequest(account_id=ACCOUNT, page_token=live),
                        metadata=meta,
                        timeout=TIMEOUT,
                    ),
                ),
                # A page token of deeply nested JSON: a bad token like any other.
                (
                    invalid,
                    lambda: stub.ListKeys(
                        pb.ListKeysRequest(
                            account_id=ACCOUNT,
                            page_token=base64.urlsafe_b64encode(
                                b"[" * 5000 + live.encode()
                            ).decode(),
                        ),
                        metadata=meta,
                        timeout=TIMEOUT,
                    ),
                ),
                # Too large to be read at all.
                (
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    lambda: stub.Authorize(
                        pb.AuthorizeRequest(api_key=live * 2000), timeout=TIMEOUT
                    ),
                ),
                # A raw key, or the admin token slightly off, offered as the admin credential.
                (
                    grpc.StatusCode.UNAUTHENTICATED,
                    lambda: stub.ListScopes(
                        pb.ListScopesRequest(),
                        metadata=(("authorization", f"Bearer {live}"),),
                        timeout=TIMEOUT,
                    ),
                ),
                (
                    grpc.StatusCode.UNAUTHENTICATED,
                    lambda: stub.ListScopes(
                        pb.ListScopesRequest(),
                        metadata=(("authorization", f"Bearer {server.admin_token}x"),),
                        timeout=TIMEOUT,
                    ),
                ),
            ]
            codes = [rpc_error(call).code() for _, call in bad_calls]
        assert codes == [expected for expected, _ in bad_calls]
    return keys, [c.key.id for c in created]


def cold_path_and_rehash(server: ServerProcess, keys: list[str]) -> None:
    """After a restart with other argon2 parameters, keys are verified and rehashed."""
    with server.client(admin=False) as public:
        for key in keys[:3]:
            assert public.authorize(key).allowed
        assert verdict(public.authorize(keys[3])) == (401, "REASON_REVOKED")


@dataclass
class Traces:
    """What two stopped server runs left behind, and the secrets they must not contain."""

    keys: list[str]
    key_ids: list[str]
    admin_token: str
    logs: str
    dump: str
    # Every file of the data directory but admin-token, byte for byte.
    files: dict[str, bytes]


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory, module_backend: Backend) -> Iterator[Traces]:
    """Two server runs on one data directory (the second rehashes), both stopped."""
    factory = ServerFactory(tmp_path_factory.mktemp("hygiene"), args=module_backend.server_args)
    # The second run starts on a cold cache, as after a Redis restart, so that it verifies
    # (and rehashes) every key from the database.
    cold_cache = (
        ["--redis-namespace", f"{module_backend.redis_namespace}second:"]
        if module_backend.redis_url
        else []
    )
    try:
        first = factory.start("--log-level", "DEBUG")
        keys, key_ids = drive_every_path(first)
        assert first.stop() == 0
        second = factory.start(
            "--log-level",
            "DEBUG",
            "--argon2-time-cost",
            "3",
            *cold_cache,
            data_dir=first.data_dir,
        )
        cold_path_and_rehash(second, keys)
        assert second.stop() == 0
    finally:
        factory.close()
    yield Traces(
        keys=keys,
        key_ids=key_ids,
        admin_token=second.admin_token,
        logs="\n".join(path.read_text(errors="replace") for path in factory.log_paths),
        dump=module_backend.dump(first.data_dir),
        files={
            path.name: path.read_bytes()
            for path in first.data_dir.iterdir()
            if path.is_file() and path.name != "admin-token"
        },
    )


class TestSecretsStayOut:
    def test_the_checks_look_at_the_right_things(self, traces: Traces) -> None:
        """The dump and logs name every key; the verifiers are argon2id, rehashed by the restart."""
        for key_id in traces.key_ids:
            assert key_id in traces.dump
            assert key_id in traces.logs
        # The second run's cost (t=3) in every verifier: the rehash path ran for each key.
        assert traces.dump.count("$argon2id$v=19$m=19456,t=3,p=1$") == len(traces.keys)

    def test_no_raw_key_or_secret_in_the_logs(self, traces: Traces) -> None:
        """Neither a raw key nor its 32-character secret appears in any server log."""
        for key in traces.keys:
            assert key not in traces.logs
            assert key[20:52] not in traces.logs

    def test_no_raw_key_or_secret_in_the_database(self, traces: Traces) -> None:
        """Neither a raw key nor its secret is in the SQL dump or in any data file's bytes."""
        for key in traces.keys:
            assert key not in traces.dump
            assert key[20:52] not in traces.dump
            for name, content in traces.files.items():
                assert key[20:52].encode() not in content, name

    def test_no_admin_token_in_logs_or_database(self, traces: Traces) -> None:
        """The admin token appears in no log, in no SQL dump, and in no other data file."""
        assert traces.admin_token not in traces.logs
        assert traces.admin_token not in traces.dump
        for name, content in traces.files.items():
            assert traces.admin_token.encode() not in content, name
