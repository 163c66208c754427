"""Reads an explored schedule's history and names every decision the invariants of
docs/revocation.md forbid."""

from __future__ import annotations

from tests.explorer.schedule import History

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
        # I3: only a key that exists, with its own secret.
        if request.secret != "right":
            found.append(f"I3: {where} allowed a {request.secret} secret")
        created = history.created_at.get(request.key_id)
        if created is None or created > request.decided + EPSILON:
            found.append(f"I3: {where} allowed a key not created yet")
        # I2: the database's revocation holds everywhere within the lease.
        committed = history.revoked_at.get(request.key_id)
        if committed is not None and request.arrived > committed + history.lease + EPSILON:
            found.append(f"I2: {where} allowed, though its revocation committed at {committed:.4f}")
        # I1: nothing sent after RevokeKey returned OK is allowed.
        for revocation in history.revocations:
            returned = revocation.returned
            same_key = revocation.key_id == request.key_id
            if same_key and returned is not None and request.arrived > returned + EPSILON:
                found.append(
                    f"I1: {where} allowed, though RevokeKey returned OK at {returned:.4f}"
                    f" (through replica {revocation.replica})"
                )
    return found


def describe(history: History) -> str:
    """The history, readable: what a failing seed's report shows."""
    lines = [f"seed {history.seed}, {history.setup}"]
    events: list[tuple[float, str]] = [(at, f"fault: {name}") for at, name in history.faults]
    events += [(at, f"revocation of {key} committed") for key, at in history.revoked_at.items()]
    for request in history.authorizations:
        events.append(
            (
                request.arrived,
                f"authorize {request.key_id} ({request.secret}) on replica {request.replica}"
                f" -> {request.outcome} at {request.decided}",
            )
        )
    for revocation in history.revocations:
        events.append(
            (
                revocation.called,
                f"RevokeKey {revocation.key_id} on replica {revocation.replica}"
                f" -> {revocation.outcome} at {revocation.returned}",
            )
        )
    lines += [f"{at:9.4f}  {what}" for at, what in sorted(events, key=lambda e: e[0])]
    return "\n".join(lines)
