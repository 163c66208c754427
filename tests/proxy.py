"""A TCP proxy for fault tests: between keysvc and Redis (or anything else on loopback), it
can hold traffic (a stalled network), cut every connection (a partition), or send new
connections elsewhere (a failover behind a fixed address).

It runs its own event loop in a thread, so that tests drive it from plain code.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from tests.services import free_port

T = TypeVar("T")


class TcpProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._refusing = False
        self._writers: set[asyncio.StreamWriter] = set()
        # Each client connection's reader, to tell which clients are still there.
        self._clients: dict[asyncio.StreamWriter, asyncio.StreamReader] = {}

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def url(self, scheme: str = "redis", path: str = "/0") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def start(self) -> TcpProxy:
        self._thread.start()
        self._run(self._start)
        return self

    def close(self) -> None:
        self._run(self._close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def stall(self) -> None:
        """Holds every byte in both directions, on open and new connections, until resume()."""
        self._call(lambda: self._flow().clear())

    def resume(self) -> None:
        self._call(lambda: self._flow().set())

    def cut(self) -> None:
        """Closes every open connection and refuses new ones until heal()."""
        self._run(self._cut)

    def heal(self) -> None:
        self._call(lambda: setattr(self, "_refusing", False))

    def point_to(self, target: tuple[str, int]) -> None:
        """Sends new connections to `target`; open ones are closed, as a failover would."""
        self._call(lambda: setattr(self, "target", target))
        self._run(self._close_open)

    @property
    def open_connections(self) -> int:
        """Client connections open now: accepted, and not closed by the client (seen even
        while traffic is held)."""

        def count() -> int:
            return sum(
                1
                for writer, reader in self._clients.items()
                if not reader.at_eof() and not writer.transport.is_closing()
            )

        return self._call(count)

    # -- inside the proxy's loop -------------------------------------------------------------

    def _flow(self) -> asyncio.Event:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        return self._flowing

    async def _start(self) -> None:
        self._flow()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._close_open()

    async def _cut(self) -> None:
        self._refusing = True
        await self._close_open()

    async def _close_open(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = {writer, upstream_writer}
        self._writers |= pair
        self._clients[writer] = reader
        try:
            await asyncio.gather(
                self._pump(reader, upstream_writer), self._pump(upstream_reader, writer)
            )
        finally:
            for each in pair:
                each.transport.abort()
            self._writers -= pair
            self._clients.pop(writer, None)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                await self._flow().wait()
                writer.write(data)
                await writer.drain()
        writer.transport.abort()

    # -- from the test's thread --------------------------------------------------------------

    def _run(self, coroutine: Callable[[], Coroutine[Any, Any, None]]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine(), self._loop).result(timeout=10)

    def _call(self, fn: Callable[[], T]) -> T:
        result: Future[T] = Future()

        def call() -> None:
            try:
                result.set_result(fn())
            except BaseException as err:
                result.set_exception(err)

        self._loop.call_soon_threadsafe(call)
        return result.result(timeout=10)
