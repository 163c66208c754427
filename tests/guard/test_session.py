"""The near cache and the Session stream against real keysvc servers, blocking and asyncio
Guards alike: hot checks make no RPC, misses go over the stream, keysvc's pushes drop entries
at once, hot keys are renewed without waiting, and when the stream fails the checks still get
keysvc's own answer, or 503, never a guess.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from keysvc_client import CreateKeyResponse, Guard, Verdict, aio
from keysvc_client import keysvc_pb2 as pb
from keysvc_client._aio_session import AioSession
from keysvc_client._near_cache import NearCache, lease_clock
from keysvc_client.metrics import Counters

from tests.e2e.harness import ServerFactory, ServerProcess, poll, with_checksum
from tests.proxy import TcpProxy

from .conftest import LONG_LEASE, TIMEOUT, GuardUnderTest, Keys, KeysOf, MakeGuard, decisions
from .scripted import HEADER, Scripted, allowed

pytestmark = pytest.mark.slow


def bearer(created: CreateKeyResponse) -> str:
    return f"Bearer {created.secret}"


def when(check: Callable[[], Verdict], reason: str) -> Callable[[], Verdict | None]:
    """For poll(): the verdict of `check` once its reason is `reason`."""

    def verdict() -> Verdict | None:
        found = check()
        return found if found.reason == reason else None

    return verdict


def hold_messages_until_queued(
    guard: GuardUnderTest, count: int, monkeypatch: pytest.MonkeyPatch
) -> list[int]:
    """Has `guard`'s next Session stream send nothing until `count` requests wait to be sent
    on it; returns the list that then gets how many requests each message carried, in order."""
    sent: list[int] = []
    inner: Any = guard.guard
    open_session = inner._open_session

    def queued() -> bool:
        stream = inner._session._stream
        return stream is not None and stream.requests.qsize() >= count

    def held(messages: Iterator[pb.SessionRequests]) -> Iterator[pb.SessionRequests]:
        # Read by gRPC's thread: held here, the misses queue up behind.
        poll(queued, timeout=TIMEOUT, what=f"{count} requests queued")
        for message in messages:
            sent.append(len(message.requests))
            yield message

    async def held_aio(
        messages: AsyncIterator[pb.SessionRequests],
    ) -> AsyncIterator[pb.SessionRequests]:
        # Read by a task of the Guard's loop, where the misses run.
        deadline = time.monotonic() + TIMEOUT
        while not queued():
            assert time.monotonic() < deadline, f"{count} requests never queued"
            await asyncio.sleep(0.001)
        async for message in messages:
            sent.append(len(message.requests))
            yield message

    wrap: Any = held if guard.flavour == "sync" else held_aio
    monkeypatch.setattr(inner, "_open_session", lambda messages: open_session(wrap(messages)))
    return sent


class TestHotChecks:
    def test_a_hot_check_makes_no_rpc(
        self, server: ServerProcess, keys: Keys, make_guard: MakeGuard
    ) -> None:
        """After one check asked keysvc, a thousand more are decided without keysvc: its own
        count of decisions, over either transport, does not move."""
        guard = make_guard(server.target)
        header = bearer(keys.new(["links:read", "links:write"]))
        assert guard.check(header, ["links:read"]).allowed
        before = decisions(server)
        verdicts = [guard.check(header, ["links:read"]) for _ in range(1000)]
        assert decisions(server) == before
        assert {(v.status, v.reason) for v in verdicts} == {(200, "allowed")}
        stats = guard.stats()
        assert (stats.hits, stats.misses, stats.entries) == (1000, 1, 1)

    def test_a_hot_key_is_answered_while_keysvc_is_frozen(
        self, servers: ServerFactory, keys_of: KeysOf, make_guard: MakeGuard
    ) -> None:
        """keysvc stopped (SIGSTOP) after the key was checked: within its lease the key is
        still answered, at once; a key the Guard never held cannot be, and is 503."""
        frozen = servers.start(*LONG_LEASE)
        keys = keys_of(frozen)
        hot, cold = bearer(keys.new()), bearer(keys.new())
        guard = make_guard(frozen.target, timeout=0.5)
        assert guard.check(hot, ["links:read"]).allowed
        frozen.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            verdict = guard.check(hot, ["links:read"])
            elapsed = time.monotonic() - started
            unknown = guard.check(cold, ["links:read"])
        finally:
            frozen.process.send_signal(signal.SIGCONT)
        assert verdict.allowed and elapsed < 0.1
        assert (unknown.status, unknown.reason) == (503, "unavailable")

    def test_an_expired_key_is_refused_from_the_cache_as_keysvc_refuses_it(
        self, server: ServerProcess, keys: Keys, make_guard: MakeGuard
    ) -> None:
        expires = datetime.now(UTC) + timedelta(seconds=1.5)
        header = bearer(keys.new(expire_time=expires))
        guard = make_guard(server.target)
        unary = make_guard(server.target, near_cache=False)
        assert guard.check(header, ["links:read"]).allowed
        expired = poll(
            when(lambda: unary.check(header, ["links:read"]), "expired"),
            timeout=5,
            what="keysvc to call the key expired",
        )
        hits = guard.stats().hits
        assert guard.check(header, ["links:read"]) == expired
        assert guard.stats().hits == hits + 1


class TestTheSameVerdicts:
    CLIENTS = (None, "203.0.113.9", "::ffff:203.0.113.9", "198.51.100.1", "2001:db8::5", "bad")
    SCOPES = ((), ("links:read",), ("customers:read", "links:read"), ("links:write",),
              ("links:write", "customers:write"))  # fmt: skip

    @pytest.mark.parametrize("required_mode", [None, "live"])
    def test_every_hit_is_keysvcs_own_verdict(
        self, server: ServerProcess, keys: Keys, make_guard: MakeGuard, required_mode: str | None
    ) -> None:
        """Keys of each kind, asked for every scope list from every kind of address: each
        hit equals what keysvc answers over unary to the same request."""
        created = [
            keys.new(["links:read", "customers:read"]),
            keys.new(["links:read"], mode="test"),
            keys.new(["links:read"], allowed_ips=["203.0.113.0/24", "2001:db8::/32"]),
            keys.new(["links:read"], expire_time=datetime.now(UTC) + timedelta(days=1)),
        ]
        cached = make_guard(server.target, required_mode=required_mode)
        unary = make_guard(server.target, required_mode=required_mode, near_cache=False)
        every_scope = sorted({scope for scopes in self.SCOPES for scope in scopes})
        for key in created:
            # One request keysvc answers, from an address every key allows, naming every
            # scope asked below (a scope keysvc never accepted is asked about: it may be
            # unknown to keysvc, which is a 500).
            cached.check(bearer(key), every_scope, client_ip="203.0.113.9")
        misses = cached.stats().misses
        for key in created:
            for scopes in self.SCOPES:
                for client_ip in self.CLIENTS:
                    expected = unary.check(bearer(key), scopes, client_ip=client_ip)
                    got = cached.check(bearer(key), scopes, client_ip=client_ip)
                    assert got == expected, (key.key.id, scopes, client_ip)
        assert cached.stats().misses == misses


class TestMisses:
    def test_a_miss_goes_over_the_stream_not_unary(
        self, server: ServerProcess, keys: Keys, make_guard: MakeGuard
    ) -> None:
        guard = make_guard(server.target)
        headers = [bearer(keys.new()) for _ in range(5)]
        before = decisions(server)
        assert all(guard.check(header, ["links:read"]).allowed for header in headers)
        after = decisions(server)
        assert (after["session"] - before["session"], after["unary"] - before["unary"]) == (5, 0)
        stats = guard.stats()
        assert (stats.misses, stats.fallbacks, stats.connects, stats.sessions_up) == (5, 0, 1, 1)

    def test_misses_waiting_together_travel_in_one_message(
        self,
        server: ServerProcess,
        keys: Keys,
        make_guard: MakeGuard,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Twenty threads miss at once, while the stream sends nothing: once all twenty wait,
        they go to keysvc in one message, and each check gets its own key's verdict (keysvc
        answers each under its request's id)."""
        guard = make_guard(server.target)
        created = [
            keys.new(["links:read", "links:write"] if number % 2 else ["links:read"])
            for number in range(20)
        ]
        sent = hold_messages_until_queued(guard, 20, monkeypatch)

        with ThreadPoolExecutor(20) as pool:
            verdicts = list(
                pool.map(lambda key: guard.check(bearer(key), ["links:write"]), created)
            )

        assert sent == [20]
        for number, (key, verdict) in enumerate(zip(created, verdicts, strict=True)):
            assert verdict.key is not None and verdict.key.key_id == key.key.id
            if number % 2:
                assert verdict.allowed
            else:
                assert (verdict.status, verdict.missing_scopes) == (403, ("links:write",))
        stats = guard.stats()
        assert (stats.misses, stats.fallbacks, stats.connects) == (20, 0, 1)

    def test_an_unknown_scope_is_500_over_the_stream_too(
        self, server: ServerProcess, keys: Keys, make_guard: MakeGuard
    ) -> None:
        header = bearer(keys.new())
        guard = make_guard(server.target)
        assert guard.check(header, ["links:read"]).allowed
        verdict = guard.check(header, ["links:delete"])
        assert (verdict.status, verdict.reason) == (500, "misconfigured")
        assert guard.stats().fallbacks == 0

    def test_without_the_near_cache_every_check_is_a_unary_rpc(
        self, server: ServerProcess, keys: Keys, make_guard: MakeGuard
    ) -> None:
        header = bearer(keys.new())
        for guard in (
            make_guard(server.target, near_cache=False),
            make_guard(server.target, near_cache_max_entries=0),
        ):
            before = decisions(server)
            assert all(guard.check(header, ["links:read"]).allowed for _ in range(3))
            after = decisions(server)
            assert (after["unary"] - before["unary"], after["session"] - before["session"]) == (
                3,
                0,
            )
            stats = guard.stats()
            assert (stats.hits, stats.connects, stats.entries) == (0, 0, 0)

    def test_a_wrong_secret_is_never_held(
        self, server: ServerProcess, keys: Keys, make_guard: MakeGuard
    ) -> None:
        created = keys.new()
        forged = f"Bearer {with_checksum(f'ck_live_{created.key.id}' + 'x' * 32)}"
        guard = make_guard(server.target)
        assert [guard.check(forged).reason for _ in range(3)] == ["not_found"] * 3
        assert guard.stats().misses == 3


class TestPushes:
    """keysvc pushes a change of a key the session authorized: the next check asks again,
    long before the lease the entry was given would have run out."""

    def test_a_revocation_holds_before_revoke_key_returns(
        self, server: ServerProcess, keys: Keys, make_guard: MakeGuard
    ) -> None:
        """Refused within a second and a half of RevokeKey's call: the entry had at least 4 s
        of its lease left, and no renewal was due before 2 s (half the lease)."""
        created = keys.new()
        guard = make_guard(server.target)
        assert guard.check(bearer(created), ["links:read"]).allowed
        revoking = threading.Thread(
            target=keys.admin.revoke_key, args=(keys.account, created.key.id)
        )
        revoking.start()
        try:
            refused = poll(
                when(lambda: guard.check(bearer(created), ["links:read"]), "revoked"),
                timeout=1.5,
                what="the Guard to refuse the revoked key",
            )
            # RevokeKey waits out the 5 s lease: it is still waiting.
            assert revoking.is_alive()
        finally:
            revoking.join(30)
        assert (refused.status, refused.reason) == (401, "revoked")
        stats = guard.stats()
        assert stats.pushes >= 1 and stats.renewals == 0

    def test_a_narrowed_key_holds_before_update_key_returns(
        self, server: ServerProcess, keys: Keys, make_guard: MakeGuard
    ) -> None:
        created = keys.new(["links:read", "links:write"])
        guard = make_guard(server.target)
        assert guard.check(bearer(created), ["links:write"]).allowed
        updating = threading.Thread(
            target=keys.admin.update_key,
            args=(keys.account, created.key.id),
            kwargs={"scopes": ["links:read"]},
        )
        updating.start()
        try:
            refused = poll(
                when(lambda: guard.check(bearer(created), ["links:write"]), "insufficient_scope"),
                timeout=1.5,
                what="the Guard to refuse the removed scope",
            )
            assert updating.is_alive()
        finally:
            updating.join(30)
        assert refused.missing_scopes == ("links:write",)
        assert guard.stats().renewals == 0
        assert guard.check(bearer(created), ["links:read"]).allowed


class TestRenewal:
    def test_a_hot_key_never_waits(
        self, short_lease: ServerProcess, keys_of: KeysOf, make_guard: MakeGuard
    ) -> None:
        """Checked every 10 ms for five leases of 0.3 s: every check after the first is a hit,
        each lease renewed in the background before it ran out."""
        keys = keys_of(short_lease)
        header = bearer(keys.new())
        guard = make_guard(short_lease.target)
        assert guard.check(header, ["links:read"]).allowed
        ends = time.monotonic() + 1.5
        verdicts = []
        while time.monotonic() < ends:
            verdicts.append(guard.check(header, ["links:read"]))
            time.sleep(0.01)  # requests arriving, not a wait for anything
        assert all(v.allowed for v in verdicts)
        stats = guard.stats()
        assert stats.misses == 1 and stats.hits == len(verdicts)
        assert stats.renewals >= 4

    def test_a_key_left_alone_runs_out_and_is_asked_again(
        self, short_lease: ServerProcess, keys_of: KeysOf, make_guard: MakeGuard
    ) -> None:
        keys = keys_of(short_lease)
        header = bearer(keys.new())
        guard = make_guard(short_lease.target)
        assert guard.check(header, ["links:read"]).allowed
        checked = lease_clock()
        poll(lambda: lease_clock() > checked + 0.35, timeout=2, what="the 0.3 s lease to end")
        assert guard.check(header, ["links:read"]).allowed
        assert (guard.stats().misses, guard.stats().renewals) == (2, 0)


class TestStreamFailures:
    def test_a_cut_stream_falls_back_to_unary_and_comes_back(
        self, servers: ServerFactory, keys_of: KeysOf, make_guard: MakeGuard
    ) -> None:
        """Every connection to keysvc cut: the stream breaks; checks are decided over unary
        while it reconnects in the background, and the stream carries them again after."""
        real = servers.start(*LONG_LEASE)
        host, port = real.target.rsplit(":", 1)
        proxy = TcpProxy((host, int(port))).start()
        try:
            keys = keys_of(real)
            headers = [bearer(keys.new()) for _ in range(3)]
            guard = make_guard(f"127.0.0.1:{proxy.port}")
            assert guard.check(headers[0], ["links:read"]).allowed
            assert guard.stats().sessions_up == 1
            proxy.cut()
            poll(lambda: guard.stats().sessions_up == 0, timeout=5, what="the stream to break")
            proxy.heal()
            # Before the stream is back: unary, deciding as keysvc does.
            verdict = guard.check(headers[1], ["links:write"])
            assert (verdict.status, verdict.missing_scopes) == (403, ("links:write",))
            assert guard.stats().fallbacks >= 1
            poll(lambda: guard.stats().sessions_up == 1, timeout=10, what="the stream back")
            fallbacks = guard.stats().fallbacks
            assert guard.check(headers[2], ["links:read"]).allowed
            assert guard.stats().fallbacks == fallbacks and guard.stats().connects >= 2
            # The entry learnt before the cut still decides within its lease.
            assert guard.check(headers[0], ["links:read"]).allowed
        finally:
            proxy.close()

    def test_a_request_in_flight_when_the_stream_breaks_is_asked_over_unary(
        self, make_guard: MakeGuard
    ) -> None:
        scripted = Scripted()
        try:
            scripted.keysvc.session = "break"
            guard = make_guard(scripted.target)
            verdict = guard.check(HEADER, ["links:read"])
            assert verdict.allowed
            assert scripted.keysvc.calls["Session"] == 1
            assert scripted.keysvc.calls["Authorize"] == 1
            assert guard.stats().fallbacks == 1
        finally:
            scripted.stop()

    def test_an_answer_that_never_comes_is_503_within_the_deadline(
        self, make_guard: MakeGuard
    ) -> None:
        scripted = Scripted()
        try:
            scripted.keysvc.session = "silent"
            guard = make_guard(scripted.target, timeout=0.2)
            guard.check(HEADER)  # the stream is open, and keysvc silent on it
            started = time.monotonic()
            verdict = guard.check(HEADER, ["links:read"])
            elapsed = time.monotonic() - started
            assert (verdict.status, verdict.reason) == (503, "unavailable")
            assert 0.2 <= elapsed < 1.0
            assert scripted.keysvc.calls["Authorize"] == 0
            assert guard.stats().unavailable == 2
        finally:
            scripted.stop()

    @pytest.mark.parametrize(
        ("code", "status"),
        [("UNAVAILABLE", 503), ("INVALID_ARGUMENT", 500), ("UNAUTHENTICATED", 500)],
    )
    def test_a_session_error_is_the_unary_failure(
        self, make_guard: MakeGuard, code: str, status: int
    ) -> None:
        scripted = Scripted()
        try:
            scripted.keysvc.session = "error"
            scripted.keysvc.error_code = grpc.StatusCode[code]
            guard = make_guard(scripted.target)
            assert guard.check(HEADER).status == status
            assert scripted.keysvc.calls["Authorize"] == 0
        finally:
            scripted.stop()

    def test_a_keysvc_without_session_is_asked_over_unary(self, make_guard: MakeGuard) -> None:
        scripted = Scripted()
        try:
            scripted.keysvc.session = "unimplemented"
            guard = make_guard(scripted.target)
            assert guard.check(HEADER, ["links:read"]).allowed
            assert guard.check(HEADER, ["links:read"]).allowed  # held: unary answers cache too
            assert scripted.keysvc.calls["Authorize"] == 1
            assert guard.stats().hits == 1
        finally:
            scripted.stop()


class TestTheLeaseCountsFromSending:
    def test_an_answer_that_came_late_is_held_only_for_what_remains(
        self, make_guard: MakeGuard
    ) -> None:
        """keysvc answers 0.3 s after it got the request, with a 0.5 s lease: the entry runs
        out 0.5 s after the request was sent, 0.2 s after the answer came; not 0.5 s after."""
        scripted = Scripted()
        try:
            scripted.keysvc.delay = 0.3
            scripted.keysvc.answer = allowed(lease=0.5)
            guard = make_guard(scripted.target)
            assert guard.check(HEADER, ["links:read"]).allowed
            # The Guard sent the request before keysvc received it, on the same clock.
            ends = scripted.keysvc.received[0] + 0.5
            poll(lambda: lease_clock() > ends + 0.01, timeout=2, what="the lease to end")
            scripted.keysvc.delay = 0.0
            assert guard.check(HEADER, ["links:read"]).allowed
            assert scripted.keysvc.calls["Session"] == 2
        finally:
            scripted.stop()


class TestClose:
    def test_close_ends_the_stream_and_its_reader(
        self, server: ServerProcess, keys: Keys, make_guard: MakeGuard
    ) -> None:
        guard = make_guard(server.target)
        header = bearer(keys.new())
        assert guard.check(header).allowed
        guard.close()
        assert (guard.stats().sessions_up, guard.stats().entries) == (0, 0)
        if guard.flavour == "sync":
            assert not any(t.name == "keysvc-guard-session" for t in threading.enumerate())
        # A check after close() starts over.
        assert guard.check(header).allowed


class CancelledAsStatus:
    """A Session call as grpc.aio's behaves when the task reading it is cancelled in the middle
    of a read: the read ends with a CANCELLED status rather than CancelledError."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()

    def __aiter__(self) -> CancelledAsStatus:
        return self

    async def __anext__(self) -> pb.SessionResponses:
        self.reading.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.CANCELLED, grpc.aio.Metadata(), grpc.aio.Metadata(), "cancelled"
            ) from None
        raise AssertionError("unreachable")

    def cancel(self) -> bool:
        return True


def test_asyncio_close_ends_the_reader_though_grpc_turns_its_cancellation_into_a_status() -> None:
    """Else the reader would back off and reopen the stream for good, and close() never end.
    Run on a loop of its own, so that a close() that never ends fails the test."""

    async def scenario() -> None:
        calls: list[CancelledAsStatus] = []

        def open_call(requests: AsyncIterator[pb.SessionRequests]) -> CancelledAsStatus:
            calls.append(CancelledAsStatus())
            return calls[-1]

        session = AioSession(open_call, NearCache(), Counters())
        assert session.open()
        await calls[0].reading.wait()
        await session.close()
        assert len(calls) == 1 and session.up == 0

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(scenario(), loop).result(TIMEOUT)
    loop.call_soon_threadsafe(loop.stop)


def test_wait_ready_opens_the_stream(server: ServerProcess) -> None:
    with Guard(server.target, timeout=TIMEOUT) as guard:
        assert guard.wait_ready()
        assert guard.stats().sessions_up == 1


def test_both_flavours_name_the_same_things() -> None:
    public = {name for name in dir(Guard) if not name.startswith("_")}
    assert public == {name for name in dir(aio.Guard) if not name.startswith("_")}
    assert {"stats", "check", "close", "wait_ready"} <= public
