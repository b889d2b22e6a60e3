"""Other servers' verify keys, known in advance.

A test cannot fetch keys from servers that do not exist, and most tests are
not about fetching keys. :class:`KnownKeys` holds the keys a test hands it
and answers the two questions ranvier asks of keys: the federation app's
"which key signed this request" (:class:`~ranvier.federation.transport.server.KeyLookup`)
and the event checks' "which key signed this event, and was it valid at the
event's time" (:class:`~ranvier.core.interfaces.VerifyKeySource`)::

    keys = KnownKeys({"remote.test": remote_key})
    keys.add("old.test", old_key, valid_until_ts=NOW_MS)
    app = FederationApp(server_name="ours.test", key_lookup=keys)
    verifier = EventVerifier(keys)

Every lookup is recorded in :attr:`KnownKeys.asked`, for tests of how often
keys are looked up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import trio

from ranvier.errors import InvalidSignatureError
from ranvier.protocol.signing import SigningKeyLike, VerifyKeyLike, get_verify_key, key_id

__all__ = ["FOREVER", "KnownKeys"]

#: The latest timestamp JSON can carry exactly: a key valid until then never expires.
FOREVER: Final = 2**53 - 1


class KnownKeys:
    """Servers' verify keys from a dict, each valid until a time."""

    def __init__(self, keys: Mapping[str, SigningKeyLike] | None = None) -> None:
        self.keys: dict[tuple[str, str], tuple[VerifyKeyLike, int]] = {}
        #: ``(server name, key ID, at_ts)`` of every lookup, in order.
        self.asked: list[tuple[str, str, int | None]] = []
        for server_name, key in (keys or {}).items():
            self.add(server_name, key)

    def add(self, server_name: str, key: SigningKeyLike, valid_until_ts: int = FOREVER) -> None:
        """Know ``key`` (its public half) as ``server_name``'s until ``valid_until_ts``."""
        self.keys[(server_name, key_id(key))] = (get_verify_key(key), valid_until_ts)

    @property
    def lookups(self) -> int:
        """How many lookups were made."""
        return len(self.asked)

    async def get_verify_key(
        self, server_name: str, key_id: str, *, at_ts: int | None = None
    ) -> VerifyKeyLike:
        """The key, if known and valid at ``at_ts`` (None: no time is asked about).

        Raises :class:`~ranvier.errors.InvalidSignatureError` otherwise, as
        a key ring does for a key it cannot trust.
        """
        await trio.lowlevel.checkpoint()
        self.asked.append((server_name, key_id, at_ts))
        found = self.keys.get((server_name, key_id))
        if found is None:
            raise InvalidSignatureError(f"{server_name} has no key {key_id}")
        key, valid_until_ts = found
        if at_ts is not None and at_ts > valid_until_ts:
            raise InvalidSignatureError(
                f"key {key_id} of {server_name} expired at {valid_until_ts}"
            )
        return key
