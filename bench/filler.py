"""Keys written into a benchmark's database with SQL, where CreateKey would take too long.

CreateKey runs argon2 (19 MiB, 2 passes: 60 to 120 ms of CPU here) for every key, so the rows
that need thousands or a million keys write them directly, as keysvc's store would: a row in
api_keys and a `created` change in key_changes for each (appended under the change log's
advisory lock, as keysvc.adapters.store.sql does), no audit event. The database must be
migrated first (`keysvc migrate`).

- `insert_usable`: keys whose secrets are returned, each with a verifier of its own, made with
  the (cheap) argon2 parameters the replica serving them is started with.
- `insert_filler`: keys nobody will ever present, all sharing one verifier, made by
  PostgreSQL itself (`generate_series`) so that a million take seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from keysvc.core import keys
from keysvc.core.hashing import Argon2Parameters, Verifier
from keysvc.core.model import Mode

ACCOUNT = "acct_bench"
SCOPES = "links:read links:write"
# As keysvc.adapters.store.sql takes it before appending to the change log.
_LOG_LOCK = "SELECT pg_advisory_xact_lock(hashtext('keysvc.key_changes'))"
_LOG_CREATED = """
    INSERT INTO key_changes (key_id, kind, changed_at)
    SELECT id, 'created', created_at FROM api_keys WHERE name LIKE %s ORDER BY id
"""


def insert_usable(url: str, count: int, parameters: Argon2Parameters, name: str) -> list[str]:
    """`count` active live keys named `name N`; returns their raw keys."""
    verifier = Verifier(parameters)
    now = datetime.now(UTC)
    raw_keys = []
    rows = []
    for number in range(count):
        key_id = keys.new_key_id()
        raw_key = keys.generate(Mode.LIVE, key_id)
        raw_keys.append(raw_key)
        rows.append(
            (
                key_id,
                ACCOUNT,
                f"{name} {number}",
                keys.display_prefix(Mode.LIVE, key_id),
                "live",
                SCOPES,
                verifier.hash(raw_key),
                now,
                "",
            )
        )
    with psycopg.connect(url) as conn:
        with conn.cursor().copy(
            "COPY api_keys (id, account_id, name, prefix, mode, scopes, verifier, created_at,"
            " allowed_ips) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)
        conn.execute(_LOG_LOCK)
        conn.execute(_LOG_CREATED, (f"{name} %",))
    return raw_keys


def insert_filler(url: str, count: int, name: str = "filler") -> None:
    """`count` active live keys, in an account of their own, all with one verifier."""
    verifier = Verifier().hash(keys.generate(Mode.LIVE, keys.new_key_id()))
    with psycopg.connect(url) as conn:
        # Key ids: 6 pseudo-random hex digits (so that inserts spread over the index as real
        # random ids do), then the number in 6 more (so that they never collide).
        conn.execute(
            """
            INSERT INTO api_keys (id, account_id, name, prefix, mode, scopes, verifier,
                                  created_at, allowed_ips)
            SELECT id, 'acct_filler', %(name)s || ' ' || n, 'ck_live_' || left(id, 6), 'live',
                   'links:read', %(verifier)s, now(), ''
            FROM (
                SELECT n, left(md5(n::text), 6) || lpad(to_hex(n), 6, '0') AS id
                FROM generate_series(1, %(count)s) AS n
            ) AS numbered
            """,
            {"name": name, "verifier": verifier, "count": count},
        )
        conn.execute(_LOG_LOCK)
        conn.execute(_LOG_CREATED, (f"{name} %",))
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE api_keys")
        conn.execute("VACUUM ANALYZE key_changes")
