"""KnownKeys: keys handed over by a test, valid until a time, every lookup recorded."""

from __future__ import annotations

import pytest

from ranvier.errors import InvalidSignatureError
from ranvier.protocol.signing import generate_signing_key, key_id
from ranvier.testing import NOW_MS, KnownKeys


async def test_known_keys_are_found_and_lookups_recorded() -> None:
    key = generate_signing_key("k1")
    keys = KnownKeys({"a.test": key})
    found = await keys.get_verify_key("a.test", "ed25519:k1")
    assert found.encode() == key.verify_key.encode()
    assert key_id(found) == "ed25519:k1"
    assert keys.asked == [("a.test", "ed25519:k1", None)]
    assert keys.lookups == 1


async def test_unknown_keys_are_refused() -> None:
    keys = KnownKeys({"a.test": generate_signing_key("k1")})
    with pytest.raises(InvalidSignatureError, match=r"b\.test has no key ed25519:k1"):
        await keys.get_verify_key("b.test", "ed25519:k1")
    with pytest.raises(InvalidSignatureError, match=r"a\.test has no key ed25519:k2"):
        await keys.get_verify_key("a.test", "ed25519:k2")
    assert keys.lookups == 2


async def test_a_key_is_trusted_only_until_it_expires() -> None:
    keys = KnownKeys()
    keys.add("a.test", generate_signing_key("k1"), valid_until_ts=NOW_MS)
    await keys.get_verify_key("a.test", "ed25519:k1", at_ts=NOW_MS)
    await keys.get_verify_key("a.test", "ed25519:k1")  # no time asked about
    with pytest.raises(InvalidSignatureError, match="expired"):
        await keys.get_verify_key("a.test", "ed25519:k1", at_ts=NOW_MS + 1)
    assert [at for _, _, at in keys.asked] == [NOW_MS, None, NOW_MS + 1]
