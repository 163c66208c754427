"""The blocking Guard: what an API server keeps for its lifetime to check each request's key."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Self, Unpack

import grpc

from keysvc_client import _common, _guard_common
from keysvc_client._common import ModeLike
from keysvc_client._connection import ChannelKeywords, Connection, connection_of
from keysvc_client._guard_common import DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT, Verdict
from keysvc_client._tls import channel_security
from keysvc_client.integrations._client_address import IPAddress, TrustedProxies
from keysvc_client.v1 import keysvc_pb2, keysvc_pb2_grpc

__all__ = ["Guard"]


class Guard:
    """Checks the key of each request an API server receives, with keysvc's Authorize.

    Build one per process and keep it: it holds one channel to keysvc, made on the first
    check (a channel used before fork() keeps working in the child). Each check has a deadline of
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
        request = keysvc_pb2.AuthorizeRequest(
            api_key=api_key,
            required_scopes=list(required),
            required_mode=self._settings.required_mode,
            client_ip=_guard_common.client_ip_field(client_ip),
        )
        try:
            response: keysvc_pb2.AuthorizeResponse = self._authorizer().Authorize(
                request, timeout=self._settings.timeout, metadata=self._metadata
            )
        except grpc.RpcError as err:
            return _guard_common.from_rpc_failure(err, api_key, required, self._settings)
        return _guard_common.from_response(response, required, self._settings)

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
        return True

    def close(self) -> None:
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

    def _authorizer(self) -> keysvc_pb2_grpc.KeyServiceStub:
        # A channel used before fork() goes on working in the child: gRPC's fork support
        # (on by default) resets it there, so one channel serves for the Guard's lifetime.
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
