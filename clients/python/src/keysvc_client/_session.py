"""The blocking Guard's Session stream: its misses and lease renewals on one bidirectional
stream, multiplexed by request id, and keysvc's pushes; read by a thread of its own.

Each message carries a batch: the misses and renewals waiting when it is sent go together (up to
MAX_PER_MESSAGE and MAX_MESSAGE_BYTES), and keysvc answers in batches of its own.

The stream is opened by the first miss, and reopened in the background after it ends, with
backoff. While it is down the Guard asks over the unary Authorize. A request in flight when it
breaks is answered BROKEN, for the Guard to ask again over unary within the check's deadline.
fork(): the stream is ended before, and its threads (ours and gRPC's) given a moment to leave
gRPC, so that gRPC's fork support can run; after it, parent and child open a new stream with
the next miss, the child on a channel of its own (keysvc_client.Guard).
"""

from __future__ import annotations

import enum
import itertools
import logging
import os
import queue
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from keysvc_client._near_cache import Entry, NearCache, lease_clock
from keysvc_client.metrics import Counters
from keysvc_client.v1 import keysvc_pb2

__all__ = [
    "NOTHING_QUEUED",
    "Answer",
    "Backoff",
    "Outcome",
    "Renewal",
    "Session",
    "gathered",
    "renewed",
]

log = logging.getLogger("keysvc_client.guard")

# gRPC status code numbers in SessionError.code.
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]

# Renewals in flight on one stream, at most: a stream that stopped answering them gets no more.
MAX_RENEWALS_IN_FLIGHT = 10_000
# Requests one message carries, at most, and their bytes: the rest go in the next. The bytes stay
# at half of what keysvc accepts in one message by default (64 KiB, --max-message-bytes); a
# request is about 70 bytes, and at most about 1.2 KB (a header past 1024 characters is refused
# without asking).
MAX_PER_MESSAGE = 512
MAX_MESSAGE_BYTES = 32 * 1024
# The bytes that frame one request in a message, at most (its field's tag and length).
FRAMING_BYTES = 4
# How long close() and fork() wait for the threads of a stream to leave gRPC.
_JOIN_SECONDS = 1.0


class Outcome(enum.Enum):
    """A request the stream did not answer."""

    DOWN = "down"  # no stream: ask over unary
    BROKEN = "broken"  # the stream ended before the answer: ask over unary, if time is left
    TIMED_OUT = "timed_out"  # the deadline passed first: keysvc could not decide


Answer = keysvc_pb2.SessionResponse | Outcome
OpenCall = Callable[[Iterator[keysvc_pb2.SessionRequests]], Any]


class Backoff:
    """Delays between reconnections: short after a stream that worked, doubling while
    attempts fail, long for a keysvc without Session (UNIMPLEMENTED)."""

    INITIAL = 0.1
    MAXIMUM = 5.0
    UNIMPLEMENTED = 60.0

    def __init__(self) -> None:
        self._delay = self.INITIAL

    def after(self, *, answered: bool, code: grpc.StatusCode | None) -> float:
        if answered:
            self._delay = self.INITIAL
        elif code is grpc.StatusCode.UNIMPLEMENTED:
            self._delay = self.UNIMPLEMENTED
        else:
            self._delay = min(self.MAXIMUM, self._delay * 2)
        # Jitter, so that API servers restarted together do not reconnect in step.
        return self._delay * random.uniform(0.8, 1.2)  # noqa: S311  # not a secret


class _Waiter:
    """A miss waiting for its answer."""

    __slots__ = ("answer", "done")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.answer: Answer = Outcome.BROKEN

    def settle(self, answer: Answer) -> None:
        self.answer = answer
        self.done.set()


class Renewal:
    """A renewal in flight: the entry it is for, and when it was sent (lease_clock)."""

    __slots__ = ("entry", "sent")

    def __init__(self, entry: Entry, sent: float) -> None:
        self.entry = entry
        self.sent = sent


class _Stream:
    __slots__ = ("call", "closed", "generation", "pending", "requests")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.requests: queue.SimpleQueue[keysvc_pb2.SessionRequest | None] = queue.SimpleQueue()
        self.pending: dict[int, _Waiter | Renewal] = {}
        self.closed = False
        self.call: Any = None


# What a queue's `ready()` gives when nothing more is queued (None: the stream's end).
NOTHING_QUEUED = object()

Request = keysvc_pb2.SessionRequest


def gathered(
    first: Request, ready: Callable[[], Request | object | None]
) -> tuple[keysvc_pb2.SessionRequests, Request | None, bool]:
    """The message carrying `first` and what else is queued, up to MAX_PER_MESSAGE requests and
    MAX_MESSAGE_BYTES; the request taken that is for the next message; whether the stream's end
    (None) came after them."""
    batch, size = [first], first.ByteSize() + FRAMING_BYTES
    while len(batch) < MAX_PER_MESSAGE:
        request = ready()
        if request is NOTHING_QUEUED:
            break
        if request is None:
            return keysvc_pb2.SessionRequests(requests=batch), None, True
        assert isinstance(request, Request)
        size += request.ByteSize() + FRAMING_BYTES
        if size > MAX_MESSAGE_BYTES:
            return keysvc_pb2.SessionRequests(requests=batch), request, False
        batch.append(request)
    return keysvc_pb2.SessionRequests(requests=batch), None, False


def _requests(requests: queue.SimpleQueue[Request | None]) -> Iterator[keysvc_pb2.SessionRequests]:
    # gRPC reads this on a thread of its own, a message whenever it can send one: each carries
    # every request queued by then. None ends our half of the stream, after what came before it.
    def ready() -> Request | object | None:
        try:
            return requests.get_nowait()
        except queue.Empty:
            return NOTHING_QUEUED

    over: Request | None = None
    while (first := requests.get() if over is None else over) is not None:
        message, over, end = gathered(first, ready)
        yield message
        if end:
            return


class Session:
    """One Session stream at a time for one Guard's channel, and the thread that reads it."""

    def __init__(self, open_call: OpenCall, cache: NearCache, counters: Counters) -> None:
        self._open_call = open_call
        self._cache = cache
        self._counters = counters
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stream: _Stream | None = None
        self._reader: threading.Thread | None = None
        # Set while close() or fork() ends the stream: nothing opens a new one meanwhile.
        self._stopping = False
        self._backoff = Backoff()
        self._ids = itertools.count(1)
        self._generations = itertools.count(1)
        # The threads gRPC started for our streams (it names them all "Thread-N (_run)"),
        # waited for before fork().
        self._grpc_threads: list[threading.Thread] = []
        _sessions.add(self)

    @property
    def up(self) -> int:
        return 0 if self._stream is None else 1

    def authorize(self, request: keysvc_pb2.AuthorizeRequest, timeout: float) -> tuple[Answer, int]:
        """keysvc's answer to `request` over the stream, and the stream's generation (which
        renewals of the key must go to); or why there is none."""
        stream = self._stream or self._start()
        if stream is None:
            return Outcome.DOWN, 0
        waiter = _Waiter()
        ident = next(self._ids)
        with self._lock:
            if stream.closed:
                return Outcome.DOWN, 0
            stream.pending[ident] = waiter
            stream.requests.put(keysvc_pb2.SessionRequest(id=ident, authorize=request))
        if not waiter.done.wait(timeout):
            stream.pending.pop(ident, None)
            if not waiter.done.is_set():
                return Outcome.TIMED_OUT, 0
        return waiter.answer, stream.generation

    def renew(self, entry: Entry) -> bool:
        """Asks, without waiting, for a new lease on `entry`'s key, over the stream that
        authorized it; False when that stream is no longer up."""
        stream = self._stream
        if stream is None or stream.generation != entry.session:
            return False
        ident = next(self._ids)
        with self._lock:
            if stream.closed or len(stream.pending) >= MAX_RENEWALS_IN_FLIGHT:
                return False
            stream.pending[ident] = Renewal(entry, lease_clock())
            stream.requests.put(
                keysvc_pb2.SessionRequest(
                    id=ident, renew=keysvc_pb2.RenewLease(key_id=entry.key.key_id)
                )
            )
        self._counters.renewals.add()
        return True

    def open(self) -> bool:
        """Opens the stream now if it is not up (Guard.wait_ready); whether it is."""
        return (self._stream or self._start()) is not None

    def close(self) -> None:
        """Ends the stream and the reader; a later miss opens them again."""
        self._stop()
        with self._lock:
            self._stopping = False

    # -- the stream and its reader ------------------------------------------------------

    def _start(self) -> _Stream | None:
        with self._lock:
            if self._stream is not None:
                return self._stream
            # A reader between two streams reconnects when its backoff is over.
            if self._reader is not None or self._stopping:
                return None
            stream = self._open()
            if stream is None:
                return None
            reader = threading.Thread(
                target=self._run, args=(stream,), name="keysvc-guard-session", daemon=True
            )
            self._reader = reader
            reader.start()
            return stream

    def _open(self) -> _Stream | None:
        """A new stream (the lock held)."""
        stream = _Stream(next(self._generations))
        before = set(threading.enumerate())
        try:
            stream.call = self._open_call(_requests(stream.requests))
        except Exception as err:  # a closed channel, say: tried again after the backoff
            log.debug("could not open keysvc's Session stream: %r", err)
            return None
        self._grpc_threads = [t for t in self._grpc_threads if t.is_alive()] + [
            t for t in threading.enumerate() if t not in before and t.daemon
        ]
        self._stream = stream
        self._wake.clear()
        self._counters.connects.add()
        return stream

    def _run(self, stream: _Stream | None) -> None:
        me = threading.current_thread()
        while True:
            answered, code = self._read(stream) if stream is not None else (False, None)
            if stream is not None:
                self._end(stream, answered, code)
            delay = self._backoff.after(answered=answered, code=code)
            self._wake.wait(delay)
            with self._lock:
                if self._reader is not me or self._stopping:
                    if self._reader is me:
                        self._reader = None
                    return
                stream = self._open()

    def _read(self, stream: _Stream) -> tuple[bool, grpc.StatusCode | None]:
        answered = False
        try:
            for message in stream.call:
                answered = True
                for response in message.responses:
                    self._dispatch(stream, response)
        except grpc.RpcError as err:
            return answered, err.code()
        except Exception:
            log.exception("keysvc's Session stream failed")
            return answered, grpc.StatusCode.UNKNOWN
        return answered, None

    def _dispatch(self, stream: _Stream, response: keysvc_pb2.SessionResponse) -> None:
        if response.WhichOneof("response") == "keys_changed":
            self._counters.pushes.add()
            self._cache.drop(response.keys_changed.key_ids)
            return
        pending = stream.pending.pop(response.id, None)
        if isinstance(pending, _Waiter):
            pending.settle(response)
        elif pending is not None:
            renewed(self._cache, pending.entry, pending.sent, response)

    def _end(self, stream: _Stream, answered: bool, code: grpc.StatusCode | None) -> None:
        with self._lock:
            stream.closed = True
            if self._stream is stream:
                self._stream = None
            pending, stream.pending = stream.pending, {}
            stopping = self._stopping
        stream.requests.put(None)
        for waiter in pending.values():
            if isinstance(waiter, _Waiter):
                waiter.settle(Outcome.BROKEN)
        if stopping:
            return
        if code is grpc.StatusCode.UNIMPLEMENTED:
            log.info("keysvc has no Session RPC: this Guard asks over the unary Authorize")
        elif answered:
            log.warning(
                "keysvc's Session stream ended (%s); checks go over the unary Authorize until"
                " it is back",
                "OK" if code is None else code.name,
            )
        else:
            log.debug("keysvc's Session stream could not be opened (%s)", code)

    def _stop(self, *, grpc_threads: bool = False) -> None:
        with self._lock:
            self._stopping = True
            stream, reader = self._stream, self._reader
        self._wake.set()
        if stream is not None:
            stream.call.cancel()
            stream.requests.put(None)
        threads = [reader] if reader is not None else []
        if grpc_threads:
            threads += self._grpc_threads
        deadline = time.monotonic() + _JOIN_SECONDS
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    # -- fork() -------------------------------------------------------------------------

    def _before_fork(self) -> None:
        self._stop(grpc_threads=True)
        self._lock.acquire()
        self._cache.before_fork()

    def _after_fork(self, *, child: bool) -> None:
        self._cache.after_fork(child=child)
        if child:
            # Locks held at fork() by threads that do not exist here stay held: new ones.
            self._lock = threading.Lock()
            self._wake = threading.Event()
        else:
            self._lock.release()
        # The reader is restarted by the next miss; one that outlived the wait stops itself.
        self._reader = None
        self._stream = None
        self._stopping = False
        self._grpc_threads = []


def renewed(
    cache: NearCache, entry: Entry, sent: float, response: keysvc_pb2.SessionResponse
) -> None:
    """What a renewal's answer does to the entry it was for."""
    kind = response.WhichOneof("response")
    if kind == "authorize":
        cache.renewed(entry, response.authorize, sent=sent)
    elif kind == "error" and response.error.code == UNAVAILABLE:
        # Tried again halfway through what remains of the lease.
        now = lease_clock()
        entry.renew_at = now + (entry.deadline - now) / 2
    # FAILED_PRECONDITION (the stream does not know the key) and anything else: the entry
    # runs out as it is, and the check after asks with the key.


_sessions: weakref.WeakSet[Session] = weakref.WeakSet()


def _before_fork() -> None:
    for session in list(_sessions):
        session._before_fork()


def _after_fork_in_parent() -> None:
    for session in list(_sessions):
        session._after_fork(child=False)


def _after_fork_in_child() -> None:
    for session in list(_sessions):
        session._after_fork(child=True)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
