"""Grants as the shared cache stores them: a compact encoding, authenticated.

Whoever can write to the cache must not be able to mint a key or widen one, so every
value carries an HMAC-SHA256 tag under a key the cache never sees (keysvc keeps it in
the database). A value whose tag does not verify, or that names another key id than the
one it is stored under, is no grant at all. An authentic value can still be old (Redis
restored from a snapshot, a replay): what makes an old grant harmless is its `seq`, which
the change log checks (keysvc.usecases.change_log).

    3{"k":key id,"a":account,"m":mode,"s":[scopes],"r":revoked,"q":seq,"d":digest hex,
      "e":expire time (POSIX seconds) or null,"i":[allowed IPs]}TAG

TAG is 32 hex digits (128 bits of the HMAC); "3" names this layout. Values of an earlier
layout are misses: the next look-up replaces them.
"""

from __future__ import annotations

import hmac
import json
from datetime import UTC, datetime

from keysvc.core import networks
from keysvc.core.model import KeyGrant, Mode

_VERSION = b"3"
_TAG_HEX = 32
_CONTEXT = b"keysvc grant\x00"


class GrantCodec:
    def __init__(self, mac_key: bytes) -> None:
        if len(mac_key) < 32:
            raise ValueError("the cache MAC key needs at least 32 bytes")
        self._mac_key = mac_key

    def _tag(self, body: bytes) -> bytes:
        return hmac.digest(self._mac_key, _CONTEXT + body, "sha256").hex()[:_TAG_HEX].encode()

    def encode(self, grant: KeyGrant) -> bytes:
        body = json.dumps(
            {
                "k": grant.key_id,
                "a": grant.account_id,
                "m": grant.mode.value,
                "s": sorted(grant.scopes),
                "r": grant.revoked,
                "q": grant.seq,
                "d": grant.digest.hex() if grant.digest is not None else None,
                "e": grant.expire_time.timestamp() if grant.expire_time is not None else None,
                "i": [str(network) for network in grant.allowed_ips],
            },
            separators=(",", ":"),
        ).encode()
        return _VERSION + body + self._tag(body)

    def decode(self, key_id: str, value: bytes) -> KeyGrant | None:
        """The grant in `value` if this deployment made it for `key_id`; None otherwise."""
        if len(value) <= len(_VERSION) + _TAG_HEX or not value.startswith(_VERSION):
            return None
        body, tag = value[len(_VERSION) : -_TAG_HEX], value[-_TAG_HEX:]
        if not hmac.compare_digest(self._tag(body), tag):
            return None
        fields = json.loads(body)
        if fields["k"] != key_id:
            return None
        return KeyGrant(
            key_id=fields["k"],
            account_id=fields["a"],
            mode=Mode(fields["m"]),
            scopes=frozenset(fields["s"]),
            revoked=fields["r"],
            seq=fields["q"],
            digest=bytes.fromhex(fields["d"]) if fields["d"] is not None else None,
            expire_time=(
                datetime.fromtimestamp(fields["e"], UTC) if fields["e"] is not None else None
            ),
            allowed_ips=networks.parsed(fields["i"]),
        )
