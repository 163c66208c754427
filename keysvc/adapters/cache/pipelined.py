"""The hot path's one Redis command, GET, on a pipelined connection of its own.

Authorize looks a key up in Redis on every request. Through redis-py that look-up
costs about three times the CPU of the command itself (docs/benchmark.md), which is
a third of a hot request's whole cost. Here every GET goes out on one connection as
soon as it is asked for, and replies are matched to requests in order, as Redis
sends them. The scripts that fill and revoke stay on redis-py: correctness lives
there; this only reads.

Any failure (refused connection, an error reply, a reply not in time) fails every
GET waiting on the connection and drops it, since later replies could no longer be
matched to their requests; the next GET connects afresh.
"""

from __future__ import annotations

import asyncio
import collections
from urllib.parse import unquote, urlsplit


class RespError(ConnectionError):
    """Redis answered with an error, or with something a GET cannot answer."""


def _command(*parts: bytes) -> bytes:
    encoded = [b"*%d\r\n" % len(parts)]
    for part in parts:
        encoded.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(encoded)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.waiting: collections.deque[asyncio.Future[bytes | None]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            while self._buffer:
                reply = self._parse()
                if reply is _INCOMPLETE:
                    return
                if not self.waiting:
                    raise RespError("a reply nobody asked for")
                future = self.waiting.popleft()
                if not future.done():
                    future.set_result(reply)  # type: ignore[arg-type]
        except (RespError, ValueError) as err:
            self.fail(RespError(f"cannot read Redis's reply: {err}"))

    def _parse(self) -> object:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            return _INCOMPLETE
        kind, line = self._buffer[:1], bytes(self._buffer[1:end])
        if kind == b"$":
            length = int(line)
            if length < 0:
                del self._buffer[: end + 2]
                return None
            if len(self._buffer) < end + 2 + length + 2:
                return _INCOMPLETE
            value = bytes(self._buffer[end + 2 : end + 2 + length])
            del self._buffer[: end + 2 + length + 2]
            return value
        if kind == b"+":
            del self._buffer[: end + 2]
            return line
        if kind == b"-":
            raise RespError(f"Redis answered an error: {line.decode(errors='replace')[:200]}")
        raise RespError("a reply a GET cannot have")

    def fail(self, error: Exception) -> None:
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            transport, self.transport = self.transport, None
            transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.fail(ConnectionError("connection to Redis lost"))


_INCOMPLETE = object()


class PipelinedGet:
    """GET over one pipelined plain-TCP connection to the Redis of a `redis://` URL."""

    @staticmethod
    def supports(url: str) -> bool:
        """Plain `redis://host:port/db` URLs; TLS and sockets stay with redis-py."""
        parts = urlsplit(url)
        return parts.scheme == "redis" and not parts.query and parts.hostname is not None

    def __init__(self, url: str, *, timeout_seconds: float) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "localhost"
        self._port = parts.port or 6379
        database = parts.path.strip("/")
        self._hello: list[bytes] = []
        if parts.password is not None:
            username = unquote(parts.username) if parts.username else None
            credentials = [username.encode()] if username else []
            password = unquote(parts.password).encode()
            self._hello.append(_command(b"AUTH", *credentials, password))
        if database and database != "0":
            self._hello.append(_command(b"SELECT", database.encode()))
        self._timeout = timeout_seconds
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connected(self) -> _Protocol:
        if self._protocol is not None and self._protocol.transport is not None:
            return self._protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is None or self._protocol.transport is None:
                loop = asyncio.get_running_loop()
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(_Protocol, self._host, self._port), self._timeout
                )
                try:
                    for hello in self._hello:
                        if await self._send(protocol, hello) != b"OK":
                            raise RespError("Redis refused the connection's set-up")
                except BaseException:
                    # Also when the caller is cancelled mid set-up: a connection nobody
                    # holds would stay open for good.
                    protocol.fail(RespError("connection set-up did not finish"))
                    raise
                self._protocol = protocol
        return self._protocol

    async def _send(self, protocol: _Protocol, command: bytes) -> bytes | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        protocol.waiting.append(future)
        assert protocol.transport is not None
        protocol.transport.write(command)

        def too_late() -> None:
            if not future.done():
                protocol.fail(TimeoutError("Redis did not answer in time"))

        timer = loop.call_later(self._timeout, too_late)
        try:
            return await future
        finally:
            timer.cancel()

    async def get(self, key: str) -> bytes | None:
        """The value of `key`; raises ConnectionError or TimeoutError (OSErrors) on failure."""
        protocol = await self._connected()
        return await self._send(protocol, _command(b"GET", key.encode()))

    async def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
