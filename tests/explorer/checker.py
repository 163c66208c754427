"""Reads an explored schedule's history and names every decision the invariants of
docs/revocation.md forbid.

A request an API server sent through a Guard is judged as any other, from when the API server
received it, whichever decided it: the Guard's near cache, or a replica the Guard asked.
- I1: allowed, though it arrived after a RevokeKey or roll of its key returned OK (or, needing
  the scope removed, after that UpdateKey returned OK).
- I2: allowed, though it arrived more than a lease after its key's revocation (or the scope's
  removal) committed: *L* for a replica's decision (the replicas' clocks run at real time
  here), *L*/(1 - rho) for a Guard's own, whose clock may run that slow.
- I3: allowed with a secret other than the key's own, or for a key not created yet.
"""

from __future__ import annotations

from tests.explorer.schedule import WRITE, History

# Virtual time is exact; this only absorbs float rounding.
EPSILON = 1e-9


def violations(history: History) -> list[str]:
    found = []
    for request in history.authorizations:
        if request.outcome != "allowed":
            continue
        assert request.decided is not None
        where = (
            f"request for key {request.key_id} on replica {request.replica}, arrived at"
            f" {request.arrived:.4f}, decided at {request.decided:.4f}"
        )
        if request.guard is not None:
            decider = "its near cache" if request.local else f"replica {request.replica}"
            where = (
                f"request for key {request.key_id} through Guard {request.guard}, arrived at"
                f" {request.arrived:.4f}, decided at {request.decided:.4f} by {decider}"
            )
        lease = history.lease / (1 - history.drift) if request.local else history.lease
        # I3: only a key that exists, with its own secret.
        if request.secret != "right":
            found.append(f"I3: {where} allowed a {request.secret} secret")
        created = history.created_at.get(request.key_id)
        if created is None or created > request.decided + EPSILON:
            found.append(f"I3: {where} allowed a key not created yet")
        # I2: the database's revocation, or its removal of a scope, holds everywhere within
        # the lease.
        committed = history.revoked_at.get(request.key_id)
        if committed is not None and request.arrived > committed + lease + EPSILON:
            found.append(f"I2: {where} allowed, though its revocation committed at {committed:.4f}")
        for narrowed, removed in history.narrowed_at.get(request.key_id, ()):
            late = request.arrived > narrowed + lease + EPSILON
            if late and request.scope in removed:
                found.append(
                    f"I2: {where} allowed {request.scope}, though its removal committed at"
                    f" {narrowed:.4f}"
                )
        # I1: nothing sent after RevokeKey (or a roll without grace) returned OK is allowed,
        # nor, after an UpdateKey removing a scope returned OK, anything needing that scope.
        for revocation in history.revocations:
            returned = revocation.returned
            same_key = revocation.key_id == request.key_id
            if not same_key or returned is None or request.arrived <= returned + EPSILON:
                continue
            if revocation.call == "narrow" and request.scope != WRITE:
                continue
            found.append(
                f"I1: {where} allowed {request.scope}, though {revocation.call} returned OK"
                f" at {returned:.4f} (through replica {revocation.replica})"
            )
    return found


def describe(history: History) -> str:
    """The history, readable: what a failing seed's report shows."""
    lines = [f"seed {history.seed}, {history.setup}"]
    events: list[tuple[float, str]] = [(at, f"fault: {name}") for at, name in history.faults]
    events += [(at, f"revocation of {key} committed") for key, at in history.revoked_at.items()]
    events += [
        (at, f"removal of {', '.join(sorted(removed))} from {key} committed")
        for key, narrowings in history.narrowed_at.items()
        for at, removed in narrowings
    ]
    for request in history.authorizations:
        through = "" if request.guard is None else f" through Guard {request.guard}"
        local = " (near cache)" if request.local else ""
        events.append(
            (
                request.arrived,
                f"authorize {request.key_id} ({request.secret}, {request.scope}){through} on"
                f" replica {request.replica} -> {request.outcome}{local} at {request.decided}",
            )
        )
    for revocation in history.revocations:
        events.append(
            (
                revocation.called,
                f"{revocation.call} {revocation.key_id} on replica {revocation.replica}"
                f" -> {revocation.outcome} at {revocation.returned}",
            )
        )
    lines += [f"{at:9.4f}  {what}" for at, what in sorted(events, key=lambda e: e[0])]
    return "\n".join(lines)
