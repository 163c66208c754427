"""The Session stream, as a Guard's near cache uses it: Authorize and lease renewals multiplexed
on one stream, answers carrying the key's whole state and its lease, and changes pushed."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from keysvc_client import KeyServiceClient, keysvc_pb2
from keysvc_client.v1 import keysvc_pb2_grpc

from tests.services import SharedPostgres, SharedRedis

from .harness import NewKey, ServerFactory, ServerProcess

pytestmark = pytest.mark.slow

LEASE = 1.0
ANSWER_DEADLINE = 10.0


class SessionProbe:
    """One Session stream driven by hand: send() requests, next_answer() in arrival order."""

    def __init__(self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._requests: queue.Queue[keysvc_pb2.SessionRequest | None] = queue.Queue()
        self._answers: queue.Queue[keysvc_pb2.SessionResponse | grpc.RpcError] = queue.Queue()
        self._next_id = 0
        stub = keysvc_pb2_grpc.KeyServiceStub(channel)
        self._call = stub.Session(iter(self._requests.get, None), metadata=metadata)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for answer in self._call:
                self._answers.put(answer)
        except grpc.RpcError as err:
            self._answers.put(err)

    def send(self, **request: object) -> int:
        self._next_id += 1
        self._requests.put(keysvc_pb2.SessionRequest(id=self._next_id, **request))  # type: ignore[arg-type]
        return self._next_id

    def authorize(self, api_key: str, *scopes: str, client_ip: str = "") -> int:
        return self.send(
            authorize=keysvc_pb2.AuthorizeRequest(
                api_key=api_key, required_scopes=list(scopes), client_ip=client_ip
            )
        )

    def renew(self, key_id: str) -> int:
        return self.send(renew=keysvc_pb2.RenewLease(key_id=key_id))

    def next_answer(self, timeout: float = ANSWER_DEADLINE) -> keysvc_pb2.SessionResponse:
        answer = self._answers.get(timeout=timeout)
        if isinstance(answer, grpc.RpcError):
            raise answer
        return answer

    def answer_to(self, request_id: int) -> keysvc_pb2.SessionResponse:
        """The answer to one request, skipping pushes."""
        while True:
            answer = self.next_answer()
            if answer.WhichOneof("response") != "keys_changed":
                assert answer.id == request_id
                return answer

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()


@pytest.fixture
def session(server: ServerProcess) -> Iterator[SessionProbe]:
    with server.channel() as channel:
        probe = SessionProbe(channel)
        yield probe
        probe.close()


def lease_of(answer: keysvc_pb2.AuthorizeResponse) -> float:
    return answer.lease.ToNanoseconds() / 1e9


class TestSessionAnswersAsAuthorize:
    def test_an_allowed_key_comes_with_its_whole_state_and_a_lease(
        self, admin: KeyServiceClient, account: str, session: SessionProbe
    ) -> None:
        expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
        created = admin.create_key(
            account,
            "Checkout",
            "live",
            ["links:read"],
            expire_time=expires,
            allowed_ips=["203.0.113.0/24"],
        )

        answer = session.answer_to(
            session.authorize(created.secret, "links:read", client_ip="203.0.113.9")
        ).authorize

        assert (answer.allowed, answer.http_status) == (True, 200)
        assert answer.key_id == created.key.id
        assert list(answer.scopes) == ["links:read"]
        assert answer.expire_time.ToDatetime(tzinfo=UTC) == expires
        assert list(answer.allowed_ips) == ["203.0.113.0/24"]
        assert 0 < lease_of(answer) <= LEASE

    def test_unary_authorize_carries_the_lease_too(
        self, public: KeyServiceClient, new_key: NewKey
    ) -> None:
        created = new_key()

        answer = public.authorize(created.secret, ["links:read"])

        assert answer.allowed
        assert 0 < lease_of(answer) <= LEASE

    def test_refusals_of_a_key_carry_no_lease(
        self, admin: KeyServiceClient, account: str, new_key: NewKey, session: SessionProbe
    ) -> None:
        created = new_key()
        admin.revoke_key(account, created.key.id)

        answer = session.answer_to(session.authorize(created.secret)).authorize

        assert answer.reason == keysvc_pb2.REASON_REVOKED
        assert not answer.HasField("lease")

    def test_many_requests_in_flight_are_each_answered_once_by_id(
        self, new_key: NewKey, session: SessionProbe
    ) -> None:
        good = new_key(scopes=["links:read"])
        sent: dict[int, int] = {}
        for number in range(60):
            if number % 3 == 0:
                sent[session.authorize(good.secret, "links:read")] = 200
            elif number % 3 == 1:
                sent[session.authorize(good.secret, "sessions:write")] = 403
            else:
                sent[session.authorize("ck_live_nonsense")] = 401

        answers: dict[int, int] = {}
        while len(answers) < len(sent):
            answer = session.next_answer()
            assert answer.id not in answers
            answers[answer.id] = answer.authorize.http_status

        assert answers == sent

    def test_more_requests_than_a_stream_decides_at_once_are_all_answered(
        self, session: SessionProbe
    ) -> None:
        """Past MAX_IN_FLIGHT requests being decided, a stream stops reading until answers go
        out; it never stops answering."""
        sent = {session.authorize(f"ck_live_nonsense{number}") for number in range(2500)}

        answered = {session.next_answer().id for _ in sent}

        assert answered == sent

    def test_a_malformed_request_is_an_error_for_it_alone(
        self, new_key: NewKey, session: SessionProbe
    ) -> None:
        created = new_key()

        bad = session.answer_to(session.authorize(created.secret, "links:teleport"))
        empty = session.answer_to(session.send())
        good = session.answer_to(session.authorize(created.secret))

        assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "links:teleport" in bad.error.message
        assert empty.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert good.authorize.allowed


class TestRenewal:
    def test_a_key_authorized_on_the_session_is_renewed_without_the_key(
        self, new_key: NewKey, session: SessionProbe
    ) -> None:
        created = new_key(scopes=["links:read"])
        session.answer_to(session.authorize(created.secret, "links:read"))

        renewed = session.answer_to(session.renew(created.key.id)).authorize

        assert renewed.allowed
        assert renewed.key_id == created.key.id
        assert list(renewed.scopes) == ["links:read"]
        assert 0 < lease_of(renewed) <= LEASE

    def test_a_key_the_session_never_verified_is_not_renewed(
        self, server: ServerProcess, new_key: NewKey, session: SessionProbe
    ) -> None:
        """Knowing a key id (they are not secret) renews nothing: only a key this very stream
        presented with its secret."""
        created = new_key()
        session.answer_to(session.authorize(created.secret))
        wrong = session.answer_to(session.authorize(created.secret[:-6] + "AAAAAA"))
        assert wrong.authorize.http_status == 401

        with server.channel() as channel:
            other = SessionProbe(channel)
            try:
                refused = other.answer_to(other.renew(created.key.id))
            finally:
                other.close()

        assert refused.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert not refused.HasField("authorize")

    def test_a_renewal_after_revocation_says_revoked(
        self, admin: KeyServiceClient, account: str, new_key: NewKey, session: SessionProbe
    ) -> None:
        created = new_key()
        session.answer_to(session.authorize(created.secret))
        admin.revoke_key(account, created.key.id)

        renewed = session.answer_to(session.renew(created.key.id)).authorize

        assert (renewed.allowed, renewed.reason) == (False, keysvc_pb2.REASON_REVOKED)
        assert not renewed.HasField("lease")

    def test_a_narrowed_key_is_renewed_narrowed(
        self, admin: KeyServiceClient, account: str, new_key: NewKey, session: SessionProbe
    ) -> None:
        created = new_key(scopes=["links:read", "links:write"])
        session.answer_to(session.authorize(created.secret))
        admin.update_key(account, created.key.id, scopes=["links:read"])

        renewed = session.answer_to(session.renew(created.key.id)).authorize

        assert renewed.allowed
        assert list(renewed.scopes) == ["links:read"]


class TestPushedChanges:
    def test_a_revocation_is_pushed_to_the_session_that_authorized_the_key(
        self, admin: KeyServiceClient, account: str, new_key: NewKey, session: SessionProbe
    ) -> None:
        created = new_key()
        bystander = new_key()
        session.answer_to(session.authorize(created.secret))

        admin.revoke_key(account, created.key.id)
        admin.revoke_key(account, bystander.key.id)

        pushed = session.next_answer()
        assert pushed.WhichOneof("response") == "keys_changed"
        assert pushed.id == 0
        # Only keys this session asked about.
        assert list(pushed.keys_changed.key_ids) == [created.key.id]


@pytest.fixture
def replicas(
    tmp_path: Path, shared_postgres: SharedPostgres, shared_redis: SharedRedis
) -> Iterator[ServerFactory]:
    """Replicas on one fresh PostgreSQL database and one Redis namespace: production's only."""
    factory = ServerFactory(
        tmp_path,
        args=[
            "--database-url", shared_postgres.fresh_database(),
            "--redis-url", shared_redis.url,
            "--redis-namespace", f"{shared_redis.prefix}{uuid.uuid4().hex[:8]}:",
        ],
    )  # fmt: skip
    yield factory
    factory.close()


def test_a_revocation_through_one_replica_is_pushed_from_another_before_revoke_returns(
    replicas: ServerFactory, account: str
) -> None:
    """Replicas tell each other of changes over Redis: a session on replica B hears of a
    revocation made through replica A long before B's next scheduled read of the change log
    (a fifth of a 20 s lease), and before A's RevokeKey has even returned."""
    a = replicas.start("--lease-seconds", "20")
    b = replicas.start("--lease-seconds", "20")
    with KeyServiceClient(a.target, admin_token=a.admin_token, timeout=60.0) as admin:
        created = admin.create_key(account, "Checkout", "live", ["links:read"])
        with b.channel() as channel:
            session = SessionProbe(channel)
            try:
                assert session.answer_to(session.authorize(created.secret)).authorize.allowed
                with ThreadPoolExecutor(1) as pool:
                    started = time.monotonic()
                    revoking = pool.submit(admin.revoke_key, account, created.key.id)
                    pushed = session.next_answer(timeout=15.0)
                    pushed_after = time.monotonic() - started
                    assert not revoking.done()
                    revoking.result(timeout=60)
            finally:
                session.close()
    assert list(pushed.keys_changed.key_ids) == [created.key.id]
    # B's own reads of the log come every 4 s.
    assert pushed_after < 2.0
