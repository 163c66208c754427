"""keysvc as the dashboard reaches it: one blocking client per signed-in user, each acting on
that user's behalf (keysvc's audit trail then names "<user> via <the dashboard's caller>"),
over the dashboard's own admin credential. Calls run on worker threads, off the event loop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from keysvc_client import Connection, KeyServiceClient
from starlette.concurrency import run_in_threadpool

__all__ = ["Keysvc"]

T = TypeVar("T")


class Keysvc:
    """Makes, keeps and closes the dashboard's clients of one keysvc."""

    def __init__(self, connection: Connection, *, timeout: float = 10.0) -> None:
        self.connection = connection
        self.timeout = timeout
        self._clients: dict[str, KeyServiceClient] = {}
        self._lock = threading.Lock()
        self._closed = False
        # Built once now, so that bad TLS files or settings fail at start-up, not on a page.
        self._clients[""] = KeyServiceClient(connection, timeout=timeout)

    def client(self, user: str) -> KeyServiceClient:
        """The client acting for `user` ("" for the dashboard itself)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the dashboard's keysvc clients are closed")
            client = self._clients.get(user)
            if client is None:
                client = KeyServiceClient(self.connection, timeout=self.timeout, on_behalf_of=user)
                self._clients[user] = client
            return client

    async def call(self, user: str, call: Callable[[KeyServiceClient], T]) -> T:
        """`call` with `user`'s client, on a worker thread."""
        return await run_in_threadpool(call, self.client(user))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
