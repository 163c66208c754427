"""Near-miss keys: a real key with one character of its secret changed and a valid checksum.

keysvc parses such a key and looks its key id up, so the refusal is decided by the
digest compare: the request an attacker who knows a key id would send.
"""

from __future__ import annotations

import random

from keysvc import keys

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
