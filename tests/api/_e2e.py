"""Devices' and users' keys as an encrypting client makes them, for the
keys and to-device tests."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ranvier.protocol.signing import SigningKey, encode_verify_key_base64, sign_json
from ranvier.testing.homeserver import TestUser

OTK: str = "signed_curve25519"


@dataclass
class DeviceKeys:
    """A device's ed25519 key and its signed ``device_keys``."""

    signing_key: SigningKey
    body: dict[str, Any]


def device_keys(user: TestUser, *, device_id: str | None = None) -> DeviceKeys:
    """``device_keys`` for ``user``'s device (another's when ``device_id``
    says so), signed with a new ed25519 key of that device."""
    device = device_id or user.device_id
    key = SigningKey(os.urandom(32), device)
    unsigned = {
        "user_id": user.user_id,
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            f"curve25519:{device}": "curve" + device,
            f"ed25519:{device}": encode_verify_key_base64(key.verify_key),
        },
    }
    return DeviceKeys(key, sign_json(unsigned, user.user_id, key))


def one_time_keys(signer: DeviceKeys, user: TestUser, *names: str) -> dict[str, Any]:
    """Signed curve25519 one-time keys named ``names``."""
    return {
        f"{OTK}:{name}": sign_json({"key": f"otk-{name}"}, user.user_id, signer.signing_key)
        for name in names
    }


@dataclass
class CrossSigning:
    """A user's three cross-signing keys and their upload body."""

    master: SigningKey
    self_signing: SigningKey
    user_signing: SigningKey
    body: dict[str, Any]


def _public(key: SigningKey) -> str:
    return encode_verify_key_base64(key.verify_key)


def cross_signing(user: TestUser) -> CrossSigning:
    """New master, self-signing and user-signing keys of ``user``, the
    latter two signed by the master key."""
    keys = [SigningKey(os.urandom(32), "x") for _ in range(3)]

    def key_json(key: SigningKey, usage: str) -> dict[str, Any]:
        return {
            "user_id": user.user_id,
            "usage": [usage],
            "keys": {f"ed25519:{_public(key)}": _public(key)},
        }

    master = key_json(keys[0], "master")
    signer = _as_named(keys[0])
    body = {
        "master_key": master,
        "self_signing_key": sign_json(key_json(keys[1], "self_signing"), user.user_id, signer),
        "user_signing_key": sign_json(key_json(keys[2], "user_signing"), user.user_id, signer),
    }
    return CrossSigning(keys[0], keys[1], keys[2], body)


class _NamedKey:
    """A signing key whose key ID is ``ed25519:<its public part>``: base64
    is not a key version our own keys would take, so the ID is given here."""

    alg = "ed25519"

    def __init__(self, key: SigningKey) -> None:
        self._key = key
        self.version = _public(key)
        self.verify_key = key.verify_key

    def sign(self, message: bytes, /) -> Any:
        return self._key.sign(message)

    def encode(self) -> bytes:
        return self._key.encode()


def _as_named(key: SigningKey) -> _NamedKey:
    return _NamedKey(key)


def sign_as(obj: dict[str, Any], user: TestUser, key: SigningKey, *, named: bool) -> dict[str, Any]:
    """``obj`` signed by ``user`` with ``key``: under its public part when
    ``named`` (a cross-signing key), else under its version (a device)."""
    return sign_json(obj, user.user_id, _as_named(key) if named else key)
