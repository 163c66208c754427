"""The Guard's near cache: what keysvc said of each key, for as long as its lease allows.

Pure logic, no I/O. An entry is the whole state of one key (account, mode, scopes, expiry,
allowed IPs) as an AuthorizeResponse stated it, keyed by the SHA-256 of the key: the key itself
is never kept. An entry decides the key's requests exactly as keysvc would, until its deadline:
the moment the Guard sent the request the answer came to, plus the answer's lease, on a clock
that keeps counting through suspend and SIGSTOP. keysvc's RevokeKey waits out every lease it
handed out before it returns, so an entry never allows a key after its revocation returned.
Refusals that keysvc says are final (revoked, expired) are kept without a deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from keysvc_client._common import bearer_credential
from keysvc_client._guard_common import (
    MODE_NAMES,
    KeyContext,
    Settings,
    Verdict,
    allowed,
    from_response,
    insufficient,
    refused_key,
    wrong_mode,
)
from keysvc_client.v1 import keysvc_pb2

__all__ = ["DEFAULT_MAX_ENTRIES", "Entry", "NearCache", "Refusal", "key_digest", "lease_clock"]

log = logging.getLogger("keysvc_client.guard")

DEFAULT_MAX_ENTRIES = 100_000

Network = IPv4Network | IPv6Network


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


lease_clock: Callable[[], float] = _boottime if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic
"""Seconds on the clock leases are counted on: CLOCK_BOOTTIME where there is one (it keeps
counting while the machine is suspended or the process stopped, so a lease runs out on time
whatever happened meanwhile), else the monotonic clock."""


def key_digest(authorization: str) -> bytes:
    """The SHA-256 of the key in an Authorization value (a raw key or `Bearer <key>`), taken
    as keysvc takes it: the near cache's only trace of the key."""
    credential = bearer_credential(authorization)
    key = authorization.strip() if credential is None else credential
    return hashlib.sha256(key.encode("utf-8")).digest()


# keysvc's own reading of client_ip and allowed_ips (keysvc/core/networks.py), kept identical.
def client_address(value: str) -> IPv4Address | IPv6Address | None:
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# Parsing an address costs more than the rest of a hit: the latest few are remembered.
_ADDRESSES: dict[str, IPv4Address | IPv6Address | None] = {}
_MAX_ADDRESSES = 4_096


def allows(allowed_ips: tuple[Network, ...], client_ip: str) -> bool:
    """Whether a request from `client_ip` may use a key restricted to `allowed_ips` (not
    empty). A missing or unparseable address is refused."""
    try:
        address = _ADDRESSES[client_ip]
    except KeyError:
        address = client_address(client_ip)
        if len(_ADDRESSES) >= _MAX_ADDRESSES:
            _ADDRESSES.clear()
        _ADDRESSES[client_ip] = address
    if address is None:
        return False
    return any(address in network for network in allowed_ips)


# Reasons whose answer states the key's whole active state, and so may be kept as an entry.
_STATE_REASONS = frozenset(
    {
        keysvc_pb2.REASON_ALLOWED,
        keysvc_pb2.REASON_INSUFFICIENT_SCOPE,
        keysvc_pb2.REASON_WRONG_MODE,
        keysvc_pb2.REASON_IP_NOT_ALLOWED,
    }
)
_FINAL_REASONS = {keysvc_pb2.REASON_REVOKED: "revoked", keysvc_pb2.REASON_EXPIRED: "expired"}

# Pushed key ids remembered, so that an answer sent before a push is not kept after it.
_MAX_CHANGED = 10_000
# Verdicts kept per entry: one per route, for the routes a key is used on.
_MAX_VERDICTS = 32
# Scope names learnt from keysvc's answers; keysvc's catalogue is far smaller.
_MAX_KNOWN_SCOPES = 4_096


class Entry:
    """One key's active state and how long it may decide. Never the key."""

    __slots__ = (
        "deadline",
        "digest",
        "expire_time",
        "key",
        "lease",
        "networks",
        "renew_at",
        "scope_set",
        "session",
        "verdicts",
    )

    def __init__(
        self,
        digest: bytes,
        key: KeyContext,
        scope_set: frozenset[str],
        expire_time: float | None,
        networks: tuple[Network, ...],
        deadline: float,
        lease: float,
        session: int,
    ) -> None:
        self.digest = digest
        self.key = key
        self.scope_set = scope_set
        # POSIX seconds, compared with the wall clock as keysvc compares them; None: never.
        self.expire_time = expire_time
        self.networks = networks
        # On lease_clock: decides while lease_clock() < deadline.
        self.deadline = deadline
        self.lease = lease
        # Renewed in the background once used past half its lease (inf: renewal under way).
        self.renew_at = deadline - lease / 2
        # The Session stream that authorized the key (0: unary), the only one that can renew.
        self.session = session
        # The verdict by mode and scopes, per required scopes: what is left to check on a hit
        # is the expiry and the address. Verdicts are immutable, so one serves every hit.
        self.verdicts: dict[tuple[str, ...], Verdict] = {}

    def decide(
        self, required: tuple[str, ...], client_ip: str, settings: Settings, known: set[str]
    ) -> Verdict | None:
        """keysvc's verdict on this request, or None when keysvc must be asked (a required
        scope keysvc has never shown this Guard: keysvc refuses an unknown one, 500)."""
        verdict = self.verdicts.get(required)
        if verdict is None:
            verdict = self._by_mode_and_scopes(required, settings, known)
            if verdict is None:
                return None
            if len(self.verdicts) < _MAX_VERDICTS:
                self.verdicts[required] = verdict
        # keysvc's order: expiry, address, then mode and scopes.
        if self.expire_time is not None and self.expire_time <= time.time():
            return refused_key(401, "expired", self.key, required)
        if self.networks and not allows(self.networks, client_ip):
            return refused_key(403, "ip_not_allowed", self.key, required)
        return verdict

    def _by_mode_and_scopes(
        self, required: tuple[str, ...], settings: Settings, known: set[str]
    ) -> Verdict | None:
        scope_set = self.scope_set
        missing = [scope for scope in required if scope not in scope_set]
        if any(scope not in known for scope in missing):
            return None
        accepted = settings.mode_name
        if accepted is not None and self.key.mode != accepted:
            return wrong_mode(self.key, required, accepted)
        if missing:
            return insufficient(self.key, required, tuple(sorted(missing)))
        return allowed(self.key, required)


class Refusal:
    """A final refusal of a key (revoked, expired): it holds for good."""

    __slots__ = ("digest", "key", "reason")

    # Never runs out, never renewed.
    deadline = math.inf
    renew_at = math.inf

    def __init__(self, digest: bytes, key: KeyContext, reason: str) -> None:
        self.digest = digest
        self.key = key
        self.reason = reason

    def decide(
        self, required: tuple[str, ...], client_ip: str, settings: Settings, known: set[str]
    ) -> Verdict | None:
        if any(scope not in known for scope in required):
            return None
        return refused_key(401, self.reason, self.key, required)  # type: ignore[arg-type]


Held = Entry | Refusal


def checked_max_entries(max_entries: int) -> int:
    """The near cache's size as a Guard's argument gives it: 0 turns the cache off."""
    if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
        raise ValueError(
            f"near_cache_max_entries must be a whole number, 0 or more, not {max_entries!r}"
        )
    return max_entries


class NearCache:
    """Entries by key digest, least recently used evicted first beyond `max_entries`.

    Thread-safe: a hit is a dict read, a move to the end of the LRU order and a comparison with
    the clock, without a lock; changes take a lock.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be positive, not {max_entries!r}")
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._held: OrderedDict[bytes, Held] = OrderedDict()
        self._digests: dict[str, bytes] = {}
        # Scope names keysvc accepted or granted: only these are decided here.
        self.known_scopes: set[str] = set()
        # Pushes so far, and the latest push of each key id (the oldest forgotten beyond
        # _MAX_CHANGED, raising the floor).
        self._epoch = 0
        self._changed: OrderedDict[str, int] = OrderedDict()
        self._changed_floor = 0
        # Scope lists shared between entries: most keys have one of a few.
        self._scope_sets: dict[tuple[str, ...], frozenset[str]] = {}
        self._mismatch_logged = False

    def __len__(self) -> int:
        return len(self._held)

    @property
    def epoch(self) -> int:
        """Read before sending a request: its answer is kept only if no push for its key came
        in between."""
        return self._epoch

    def get(self, digest: bytes, now: float) -> Held | None:
        held = self._held.get(digest)
        if held is None:
            return None
        if held.deadline <= now:
            self._discard(digest, held)
            return None
        # Dropped meanwhile by another thread: decided on all the same, as it was current.
        with contextlib.suppress(KeyError):
            self._held.move_to_end(digest)
        return held

    def answered(
        self,
        digest: bytes,
        response: keysvc_pb2.AuthorizeResponse,
        required: tuple[str, ...],
        *,
        sent: float,
        epoch: int,
        session: int,
        settings: Settings,
        client_ip: str,
    ) -> Verdict:
        """The Guard's verdict on keysvc's `response` to a request sent at `sent`, kept for the
        checks after it if it may be (learn)."""
        verdict = from_response(response, required, settings)
        self.learn(
            digest,
            response,
            required,
            sent=sent,
            epoch=epoch,
            session=session,
            verdict=verdict,
            settings=settings,
            client_ip=client_ip,
        )
        return verdict

    def learn(
        self,
        digest: bytes,
        response: keysvc_pb2.AuthorizeResponse,
        required: tuple[str, ...],
        *,
        sent: float,
        epoch: int,
        session: int,
        verdict: Verdict,
        settings: Settings,
        client_ip: str,
    ) -> None:
        """Keeps what keysvc answered to a request sent at `sent` (lease_clock), if it may.

        `verdict` is what the Guard answers from the response: an entry that would decide
        this very request otherwise is not kept (and logged once), so that the cache never
        decides differently from keysvc, whatever a newer keysvc changes.
        """
        self._learn_scopes(required, response.scopes)
        held = self._held_of(digest, response, sent=sent, session=session)
        if held is None:
            return
        local = held.decide(required, client_ip, settings, self.known_scopes)
        if local != verdict:
            # Expiring this very moment by this machine's clock is no surprise; else say so.
            if not self._mismatch_logged and (local is None or local.reason != "expired"):
                self._mismatch_logged = True
                log.warning(
                    "the near cache would decide key %s differently from keysvc (%s %s);"
                    " keysvc is asked instead",
                    response.key_id,
                    verdict.status,
                    verdict.reason,
                )
            return
        with self._lock:
            if self._changed_since(response.key_id, epoch):
                return
            self._put(held)

    def renewed(
        self,
        entry: Entry,
        response: keysvc_pb2.AuthorizeResponse,
        *,
        sent: float,
    ) -> None:
        """Replaces `entry` with what a renewal sent at `sent` answered, if `entry` is still
        held (not dropped by a push, evicted or replaced meanwhile)."""
        self._learn_scopes((), response.scopes)
        held = None
        if response.key_id == entry.key.key_id:
            held = self._held_of(entry.digest, response, sent=sent, session=entry.session)
        with self._lock:
            if self._held.get(entry.digest) is not entry:
                return
            if held is not None:
                self._put(held)
            elif response.reason not in _STATE_REASONS:
                # Unknown to keysvc now: nothing to decide on.
                self._remove(entry.digest)
            # A state without a lease: the entry runs out as it is.

    def drop(self, key_ids: Iterable[str]) -> int:
        """Forgets every entry of these keys (keysvc pushed that they changed); how many."""
        dropped = 0
        with self._lock:
            self._epoch += 1
            for key_id in key_ids:
                self._changed[key_id] = self._epoch
                self._changed.move_to_end(key_id)
                digest = self._digests.get(key_id)
                if digest is not None:
                    self._remove(digest)
                    dropped += 1
            while len(self._changed) > _MAX_CHANGED:
                _, epoch = self._changed.popitem(last=False)
                self._changed_floor = max(self._changed_floor, epoch)
        return dropped

    def clear(self) -> None:
        with self._lock:
            self._held.clear()
            self._digests.clear()

    def before_fork(self) -> None:
        # Held across fork(), so that the child's copy is not caught halfway through a change.
        self._lock.acquire()

    def after_fork(self, *, child: bool) -> None:
        if child:
            self._lock = threading.Lock()
        else:
            self._lock.release()

    # -- internals ----------------------------------------------------------------------

    def _held_of(
        self,
        digest: bytes,
        response: keysvc_pb2.AuthorizeResponse,
        *,
        sent: float,
        session: int,
    ) -> Held | None:
        mode = MODE_NAMES.get(response.mode)
        if not response.key_id or mode is None:
            return None
        scopes = tuple(response.scopes)
        scope_set = self._scope_set(scopes)
        key = KeyContext(
            key_id=response.key_id, account_id=response.account_id, mode=mode, scopes=scopes
        )
        final = _FINAL_REASONS.get(response.reason)
        if final is not None:
            return Refusal(digest, key, final)
        if response.reason not in _STATE_REASONS or not response.HasField("lease"):
            return None
        lease = response.lease.seconds + response.lease.nanos / 1e9
        if not lease > 0:
            return None
        try:
            networks = tuple(ipaddress.ip_network(value) for value in response.allowed_ips)
        except ValueError:
            return None
        expire_time = None
        if response.HasField("expire_time"):
            expire_time = response.expire_time.seconds + response.expire_time.nanos / 1e9
        return Entry(
            digest,
            key,
            scope_set,
            expire_time,
            networks,
            deadline=sent + lease,
            lease=lease,
            session=session,
        )

    def _scope_set(self, scopes: tuple[str, ...]) -> frozenset[str]:
        found = self._scope_sets.get(scopes)
        if found is None:
            found = frozenset(scopes)
            if len(self._scope_sets) < 1024:
                self._scope_sets[scopes] = found
        return found

    def _learn_scopes(self, required: Iterable[str], granted: Iterable[str]) -> None:
        known = self.known_scopes
        for scope in (*required, *granted):
            if scope not in known and len(known) < _MAX_KNOWN_SCOPES:
                known.add(scope)

    def _changed_since(self, key_id: str, epoch: int) -> bool:
        if epoch == self._epoch:
            return False
        changed = self._changed.get(key_id)
        return (changed if changed is not None else self._changed_floor) > epoch

    def _put(self, held: Held) -> None:
        digest, key_id = held.digest, held.key.key_id
        old = self._digests.get(key_id)
        if old is not None and old != digest:
            self._held.pop(old, None)
        self._held[digest] = held
        self._held.move_to_end(digest)
        self._digests[key_id] = digest
        while len(self._held) > self.max_entries:
            _, evicted = self._held.popitem(last=False)
            if self._digests.get(evicted.key.key_id) == evicted.digest:
                del self._digests[evicted.key.key_id]

    def _discard(self, digest: bytes, held: Held) -> None:
        with self._lock:
            if self._held.get(digest) is held:
                self._remove(digest)

    def _remove(self, digest: bytes) -> None:
        held = self._held.pop(digest, None)
        if held is not None and self._digests.get(held.key.key_id) == digest:
            del self._digests[held.key.key_id]
