"""The blocking Guard: what an API server keeps for its lifetime to check each request's key."""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Self, Unpack

import grpc

from keysvc_client import _common, _guard_common, metrics
from keysvc_client._common import ModeLike
from keysvc_client._connection import ChannelKeywords, Connection, connection_of
from keysvc_client._guard_common import DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT, Verdict
from keysvc_client._near_cache import (
    DEFAULT_MAX_ENTRIES,
    Entry,
    NearCache,
    checked_max_entries,
    key_digest,
    lease_clock,
)
from keysvc_client._session import Outcome, Session
from keysvc_client._tls import channel_security
from keysvc_client.integrations._client_address import IPAddress, TrustedProxies
from keysvc_client.metrics import GuardStats
from keysvc_client.v1 import keysvc_pb2, keysvc_pb2_grpc

__all__ = ["Guard"]


class Guard:
    """Checks the key of each request an API server receives, with keysvc's Authorize.

    Build one per process and keep it: it holds one channel to keysvc, made on the first
    check (a Guard used before fork() keeps working in the child). Each check has a deadline of
    `timeout` seconds (50 ms by default), within which gRPC retries an UNAVAILABLE Authorize
    with a short backoff (`max_attempts` in all; 1 turns retries off).

    check() never raises for keysvc being down, slow or refusing this server: it returns a
    Verdict whose status is 200 only when keysvc allowed the key. When keysvc cannot decide
    the status is `unavailable_status` (503; any 5xx may be chosen, nothing else), and when
    keysvc refuses this server's own request (wrong `token`, unknown scope) it is 500.
    There is no fail-open setting.

    keysvc is given as a keysvc_client.Connection, or as its settings in keywords: the target,
    `token`, and `tls_ca`, `tls_cert`, `tls_key`, `tls_server_name`, `credentials` and
    `options` as Connection documents them. The token is this API server's credential (an
    authorizer's token from keysvc's callers file); a loopback keysvc with no authorizers
    configured needs none. `required_mode` ("live" or "test") refuses keys of the other mode,
    as a staging server refuses live keys.

    `trusted_proxies` (addresses and CIDR ranges, none by default) are the API server's own
    proxies: only when a request's immediate peer is one of them do the integrations read the
    client's address from `forwarded_header` ("x-forwarded-for", or RFC 7239's "forwarded"),
    for keys restricted to allowed IPs.

    The near cache (on by default; `near_cache=False` or `near_cache_max_entries=0` turns it
    off) keeps what keysvc answered about each key, by the key's SHA-256, for as long as the
    answer's lease allows, and decides the key's next requests itself, with no RPC. Keys it
    does not hold are asked over one Session stream per Guard (the unary Authorize while the
    stream is down), which also renews the leases of hot keys in the background and brings
    keysvc's word of changed keys, dropped at once. `stats()` has the counts.
    """

    DEFAULT_TIMEOUT = DEFAULT_TIMEOUT

    def __init__(
        self,
        target: str | Connection,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        required_mode: ModeLike | None = None,
        unavailable_status: int = 503,
        realm: str = "api",
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        trusted_proxies: Iterable[str] = (),
        forwarded_header: str = "x-forwarded-for",
        near_cache: bool = True,
        near_cache_max_entries: int = DEFAULT_MAX_ENTRIES,
        **settings: Unpack[ChannelKeywords],
    ) -> None:
        self._proxies = TrustedProxies(trusted_proxies, forwarded_header)
        self._settings = _guard_common.settings(
            timeout=timeout,
            required_mode=required_mode,
            unavailable_status=unavailable_status,
            realm=realm,
            max_attempts=max_attempts,
        )
        connection = connection_of("Guard", target, ("token", token), settings)
        self._target = connection.target
        self._metadata = _common.metadata_for(connection.token)
        # Checked now, so a bad certificate path fails at start-up rather than on a request.
        self._credentials, self._options = channel_security(
            connection, _guard_common.channel_options(self._settings, connection.options)
        )
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: keysvc_pb2_grpc.KeyServiceStub | None = None
        self._counters = metrics.Counters()
        self._cache: NearCache | None = None
        self._session: Session | None = None
        max_entries = checked_max_entries(near_cache_max_entries)
        if near_cache and max_entries:
            cache = self._cache = NearCache(max_entries)
            # The reader thread keeps the session alive, not the Guard: it opens streams
            # through a weak reference, and stops when the Guard is collected.
            session = self._session = Session(_opener(weakref.ref(self)), cache, self._counters)
            weakref.finalize(self, session.close)
            self._counters.entries = cache.__len__
            self._counters.sessions_up = lambda: session.up
            _streaming.add(self)
        metrics.track(self, self._counters)

    @property
    def target(self) -> str:
        return self._target

    @property
    def timeout(self) -> float:
        return self._settings.timeout

    @property
    def required_mode(self) -> str | None:
        return self._settings.mode_name

    @property
    def realm(self) -> str:
        return self._settings.realm

    @property
    def trusted_proxies(self) -> TrustedProxies:
        """The API server's own proxies, whose header the integrations read the client's
        address from; none by default."""
        return self._proxies

    def check(
        self,
        authorization: str | None,
        scopes: Iterable[str] = (),
        *,
        client_ip: str | IPAddress | None = None,
    ) -> Verdict:
        """The verdict on a request carrying this Authorization header value (None: no header)
        from `client_ip`, the address the request came from (the integrations find it).

        Every scope in `scopes` must be held. A key restricted to allowed IPs is refused
        without a client_ip. Never raises for keysvc's sake.
        """
        required = _guard_common.required_scopes(scopes)
        api_key = _guard_common.precheck(authorization, required)
        if isinstance(api_key, Verdict):
            return api_key
        ip = _guard_common.client_ip_field(client_ip)
        cache = self._cache
        if cache is None:
            verdict = self._unary(api_key, required, ip, None, self._settings.timeout)
        else:
            digest = key_digest(api_key)
            now = lease_clock()
            held = cache.get(digest, now)
            if held is not None:
                found = held.decide(required, ip, self._settings, cache.known_scopes)
                if found is not None:
                    self._counters.hits.add()
                    if now >= held.renew_at and isinstance(held, Entry):
                        self._renew(held)
                    return found
            verdict = self._ask(api_key, digest, required, ip)
        self._counters.misses.add()
        if verdict.reason == "unavailable":
            self._counters.unavailable.add()
        return verdict

    def stats(self) -> GuardStats:
        """What this Guard counted since it was built (hits, misses, renewals, pushes, stream
        connects, fallbacks to unary, unavailable answers) and holds now."""
        return self._counters.stats()

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Connects to keysvc now; False if it cannot within `timeout` seconds.

        Optional: a start-up that calls it spares the first request the connection set-up.
        """
        self._authorizer()
        assert self._channel is not None
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            return False
        if self._session is not None:
            self._session.open()
        return True

    def close(self) -> None:
        """Ends the Session stream and its reader, closes the channel and empties the near
        cache. A check after it starts over."""
        if self._session is not None:
            self._session.close()
        if self._cache is not None:
            self._cache.clear()
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = self._stub = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        # Never the token.
        return (
            f"Guard({self._target!r}, timeout={self.timeout}, required_mode={self.required_mode!r})"
        )

    def _request(
        self, api_key: str, required: tuple[str, ...], client_ip: str
    ) -> keysvc_pb2.AuthorizeRequest:
        return keysvc_pb2.AuthorizeRequest(
            api_key=api_key,
            required_scopes=list(required),
            required_mode=self._settings.required_mode,
            client_ip=client_ip,
        )

    def _ask(self, api_key: str, digest: bytes, required: tuple[str, ...], ip: str) -> Verdict:
        """keysvc's verdict over the Session stream, or over unary when the stream is down
        or broke before answering; what it says of the key is kept in the near cache."""
        assert self._cache is not None and self._session is not None
        settings = self._settings
        sent, epoch = lease_clock(), self._cache.epoch
        deadline = sent + settings.timeout
        answer, session = self._session.authorize(
            self._request(api_key, required, ip), settings.timeout
        )
        if answer is Outcome.TIMED_OUT:
            return _guard_common.from_failure(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "no answer on the Session stream within the deadline",
                api_key,
                required,
                settings,
            )
        if isinstance(answer, Outcome):
            self._counters.fallbacks.add()
            remaining = deadline - lease_clock()
            if remaining <= 0:
                return _guard_common.from_failure(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "the Session stream broke, and no time was left to ask again",
                    api_key,
                    required,
                    settings,
                )
            return self._unary(api_key, required, ip, digest, remaining)
        return _guard_common.from_session_answer(
            answer,
            lambda response: self._decided(response, digest, required, ip, sent, epoch, session),
            api_key,
            required,
            settings,
        )

    def _unary(
        self,
        api_key: str,
        required: tuple[str, ...],
        ip: str,
        digest: bytes | None,
        timeout: float,
    ) -> Verdict:
        """keysvc's verdict from the unary Authorize, kept in the near cache if there is one."""
        epoch = 0 if self._cache is None else self._cache.epoch
        sent = lease_clock()
        try:
            response: keysvc_pb2.AuthorizeResponse = self._authorizer().Authorize(
                self._request(api_key, required, ip), timeout=timeout, metadata=self._metadata
            )
        except grpc.RpcError as err:
            return _guard_common.from_rpc_failure(err, api_key, required, self._settings)
        if digest is None:
            return _guard_common.from_response(response, required, self._settings)
        return self._decided(response, digest, required, ip, sent, epoch, 0)

    def _decided(
        self,
        response: keysvc_pb2.AuthorizeResponse,
        digest: bytes,
        required: tuple[str, ...],
        ip: str,
        sent: float,
        epoch: int,
        session: int,
    ) -> Verdict:
        assert self._cache is not None
        return self._cache.answered(
            digest,
            response,
            required,
            sent=sent,
            epoch=epoch,
            session=session,
            settings=self._settings,
            client_ip=ip,
        )

    def _renew(self, entry: Entry) -> None:
        # Once: a renewal's answer (or its failure) sets when the next one is due.
        entry.renew_at = math.inf
        assert self._session is not None
        self._session.renew(entry)

    def _open_session(self, requests: Iterator[keysvc_pb2.SessionRequests]) -> Any:
        # Session is called with Authorize's credential.
        return self._authorizer().Session(requests, metadata=self._metadata)

    def _forked(self) -> None:
        """In a child of fork(): a channel of its own (see _authorizer)."""
        self._lock = threading.Lock()
        if self._channel is not None:
            _inherited.append(self._channel)
        self._channel = self._stub = None

    def _authorizer(self) -> keysvc_pb2_grpc.KeyServiceStub:
        # A channel used before fork() goes on working in the child: gRPC's fork support
        # (on by default) resets it there, so without the near cache one channel serves for
        # the Guard's lifetime. With it, the child makes a channel of its own: a channel that
        # carried a stream may keep, in the child, gRPC's count of streams whose thread only
        # the parent has, and a new stream on it would never be read.
        stub = self._stub
        if stub is not None:
            return stub
        with self._lock:
            if self._stub is None:
                if self._credentials is None:
                    channel = grpc.insecure_channel(self._target, options=self._options)
                else:
                    channel = grpc.secure_channel(
                        self._target, self._credentials, options=self._options
                    )
                self._channel = channel
                self._stub = keysvc_pb2_grpc.KeyServiceStub(channel)
            return self._stub


def _opener(guard: weakref.ref[Guard]) -> Callable[[Iterator[keysvc_pb2.SessionRequests]], Any]:
    def open_session(requests: Iterator[keysvc_pb2.SessionRequests]) -> Any:
        alive = guard()
        if alive is None:
            raise RuntimeError("the Guard is gone")
        return alive._open_session(requests)

    return open_session


# Guards with a Session stream, and the channels their fork() children were left with: kept,
# never closed, as gRPC's fork support may have closed them already, or may not have run.
_streaming: weakref.WeakSet[Guard] = weakref.WeakSet()
_inherited: list[grpc.Channel] = []


def _after_fork_in_child() -> None:
    for guard in list(_streaming):
        guard._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
