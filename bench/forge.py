"""Forged keys, with valid checksums, as an attacker sends them.

Near misses: a real key with one character of its secret changed. keysvc parses such a key
and looks its key id up, so the refusal is decided by the digest compare: the request an
attacker who knows a key id would send. Made-up keys: each with a key id of its own that
nobody issued, so that no negative cache of key ids can help.
"""

from __future__ import annotations

import random

from keysvc.core import keys
from keysvc.core.model import Mode

_PREFIX_LENGTH = keys.KEY_LENGTH - keys.BODY_LENGTH
SECRET_START = _PREFIX_LENGTH + keys.KEY_ID_LENGTH
SECRET_END = SECRET_START + keys.SECRET_LENGTH


def near_misses(raw_key: str) -> list[str]:
    """Every key that differs from `raw_key` in one secret character: 32 x 61 of them."""
    found = []
    for position in range(SECRET_START, SECRET_END):
        for replacement in keys.ALPHABET.replace(raw_key[position], ""):
            unsigned = raw_key[:position] + replacement + raw_key[position + 1 : SECRET_END]
            found.append(unsigned + keys._checksum(unsigned))
    return found


def flood_of(raw_keys: list[str], seed: int = 0) -> list[str]:
    """The near misses of all `raw_keys`, shuffled so that consecutive ones differ in key."""
    pool = [miss for raw_key in raw_keys for miss in near_misses(raw_key)]
    random.Random(seed).shuffle(pool)
    return pool


def made_up(count: int, seed: int = 0) -> list[str]:
    """`count` well-formed live keys, each with a key id nobody issued (71 random bits)."""
    rng = random.Random(seed)
    found = []
    for _ in range(count):
        body = "".join(rng.choice(keys.ALPHABET) for _ in range(keys.KEY_ID_LENGTH + 32))
        unsigned = keys.MODE_PREFIXES[Mode.LIVE] + body
        found.append(unsigned + keys._checksum(unsigned))
    return found
