"""The asyncio Guard: the same names, arguments and verdicts as the blocking one, as coroutines."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self, Unpack

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
    """An asyncio Guard; see keysvc_client.Guard for the semantics.

    It may be built anywhere, at import time too: the channel is made on the first check,
    in the event loop running it (grpc.aio binds a channel to its loop), and made again if a
    later check runs in another loop, as test clients that start a loop per test do.
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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: keysvc_pb2_grpc.KeyServiceAsyncStub | None = None

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

    async def check(
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
            response: keysvc_pb2.AuthorizeResponse = await self._authorizer().Authorize(
                request, timeout=self._settings.timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as err:
            return _guard_common.from_rpc_failure(err, api_key, required, self._settings)
        return _guard_common.from_response(response, required, self._settings)

    async def wait_ready(self, timeout: float = 5.0) -> bool:
        """Connects to keysvc now; False if it cannot within `timeout` seconds."""
        self._authorizer()
        assert self._channel is not None
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        channel, loop = self._channel, self._loop
        self._channel = self._stub = self._loop = None
        # A channel of another loop is closed when it is collected; it cannot be awaited here.
        if channel is not None and loop is asyncio.get_running_loop():
            await channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (
            f"aio.Guard({self._target!r}, timeout={self.timeout}, "
            f"required_mode={self.required_mode!r})"
        )

    def _authorizer(self) -> keysvc_pb2_grpc.KeyServiceAsyncStub:
        loop = asyncio.get_running_loop()
        if self._stub is None or self._loop is not loop:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(self._target, options=self._options)
            else:
                channel = grpc.aio.secure_channel(
                    self._target, self._credentials, options=self._options
                )
            self._channel, self._loop = channel, loop
            # See aio.KeyServiceClient: Any type-checks with and without grpc's stubs.
            stub: Any = keysvc_pb2_grpc.KeyServiceStub(channel)
            self._stub = stub
        return self._stub
