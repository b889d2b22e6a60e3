"""Ed25519 signing keys, and signing and verifying JSON.

The Matrix specification (appendices, "Signing JSON") signs an object by
removing its ``signatures`` and ``unsigned`` members, encoding the rest as
canonical JSON and signing those bytes; the signature goes, in unpadded
base64, to ``signatures[<server name>][<key ID>]``. ``unsigned`` is outside
the signature so that servers can annotate an object in transit, and
``signatures`` is outside so that several servers can sign the same object.

Keys are PyNaCl keys that also carry the two halves of their key ID,
``alg`` and ``version``, exactly as the ``signedjson`` library's keys do. The
functions here accept any object shaped that way (see :class:`SigningKeyLike`
and :class:`VerifyKeyLike`), so keys made by signedjson work here, and keys
made here are real ``nacl.signing`` keys that signedjson's functions accept.

Signing-key files use Synapse's format: one key per line,
``ed25519 <version> <unpadded base64 of the 32-byte seed>``, so an operator
can move a key between Synapse and ranvier by copying the file.

Everything here is synchronous and keeps no state between calls: signature
checks cost tens of microseconds each, so the homeserver runs batches of
them on a worker thread (libsodium releases the GIL).
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Iterable, Mapping
from typing import Any, Final, Protocol

import nacl.exceptions
import nacl.signing
import nacl.utils

from ranvier.errors import BadJsonError, InvalidSignatureError
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.unpadded_base64 import decode_unpadded_base64, encode_unpadded_base64

__all__ = [
    "ED25519",
    "SigningKey",
    "SigningKeyFileError",
    "SigningKeyLike",
    "VerifyKey",
    "VerifyKeyLike",
    "decode_signing_key_base64",
    "decode_verify_key_base64",
    "decode_verify_key_bytes",
    "encode_signing_key_base64",
    "encode_verify_key_base64",
    "generate_key_version",
    "generate_signing_key",
    "get_verify_key",
    "key_id",
    "read_signing_keys",
    "sign_json",
    "signature_key_ids",
    "verify_signed_json",
    "write_signing_keys",
]

#: The only signing algorithm Matrix defines.
ED25519: Final = "ed25519"

_SEED_BYTES: Final = 32
_PUBLIC_KEY_BYTES: Final = 32
_SIGNATURE_BYTES: Final = 64
# The spec's grammar for the version half of a key ID we publish.
_VERSION_RE: Final = re.compile(r"[a-zA-Z0-9_]+")
_VERSION_ALPHABET: Final = string.ascii_letters + string.digits


class SigningKeyLike(Protocol):
    """Anything that signs like a PyNaCl key and names itself like a signedjson key."""

    @property
    def alg(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def verify_key(self) -> nacl.signing.VerifyKey: ...

    def sign(self, message: bytes, /) -> nacl.signing.SignedMessage: ...

    def encode(self) -> bytes: ...


class VerifyKeyLike(Protocol):
    """Anything that verifies like a PyNaCl key and names itself like a signedjson key."""

    @property
    def alg(self) -> str: ...

    @property
    def version(self) -> str: ...

    def verify(self, message: bytes, signature: bytes, /) -> bytes: ...

    def encode(self) -> bytes: ...


class SigningKeyFileError(ValueError):
    """A signing-key file that cannot be read.

    It is a ValueError and not a MatrixError: the file belongs to the
    operator, not to a remote party, and nobody answers an HTTP request with
    it. ``line`` is the 1-based line number, so the operator can find it. The
    message never repeats the line itself, which may hold a secret seed.
    """

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"signing key file, line {line}: {problem}")
        self.line = line
        self.problem = problem


class VerifyKey(nacl.signing.VerifyKey):
    """A PyNaCl verify key that knows its key ID, like signedjson's."""

    alg: str
    version: str

    def __init__(self, key: bytes, version: str) -> None:
        super().__init__(key)
        self.alg = ED25519
        self.version = version

    def __repr__(self) -> str:
        return f"<VerifyKey {self.alg}:{self.version} {encode_unpadded_base64(bytes(self))}>"


class SigningKey(nacl.signing.SigningKey):
    """A PyNaCl signing key that knows its key ID, like signedjson's.

    Its ``verify_key`` is a :class:`VerifyKey` carrying the same ID, so
    ``key.verify_key`` can be handed straight to :func:`verify_signed_json`.
    """

    alg: str
    version: str
    verify_key: VerifyKey

    def __init__(self, seed: bytes, version: str) -> None:
        _check_version(version)
        super().__init__(seed)
        self.alg = ED25519
        self.version = version
        self.verify_key = VerifyKey(bytes(self.verify_key), version)

    def __repr__(self) -> str:
        # Names the key by its ID and public half only: a repr ends up in
        # logs, and the seed must not.
        public = encode_unpadded_base64(bytes(self.verify_key))
        return f"<SigningKey {self.alg}:{self.version} public {public}>"


def _check_version(version: str) -> None:
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise ValueError(f"a key version must be one or more of [a-zA-Z0-9_], not {version!r}")


def generate_key_version() -> str:
    """A fresh key version: ``a_`` and four random letters or digits.

    A new version for every new key means remote servers that cached the
    old key under its ID never mistake the new one for it.
    """
    return "a_" + "".join(secrets.choice(_VERSION_ALPHABET) for _ in range(4))


def generate_signing_key(version: str) -> SigningKey:
    """A new random ed25519 key whose key ID is ``ed25519:<version>``."""
    return SigningKey(nacl.utils.random(_SEED_BYTES), version)


def key_id(key: SigningKeyLike | VerifyKeyLike) -> str:
    """The key ID (``<alg>:<version>``) that names ``key`` in signatures."""
    return f"{key.alg}:{key.version}"


def get_verify_key(signing_key: SigningKeyLike) -> VerifyKey:
    """The public half of ``signing_key``, carrying the same key ID."""
    return VerifyKey(bytes(signing_key.verify_key), signing_key.version)


def encode_signing_key_base64(signing_key: SigningKeyLike) -> str:
    """The key's 32-byte seed in unpadded base64, as key files hold it."""
    return encode_unpadded_base64(signing_key.encode())


def decode_signing_key_base64(algorithm: str, version: str, seed_base64: str) -> SigningKey:
    """Rebuild a signing key from its algorithm, version and base64 seed.

    Raises ValueError saying which part is wrong; the message never repeats
    the seed.
    """
    if algorithm != ED25519:
        raise ValueError(f"unsupported signing key algorithm {algorithm!r}")
    _check_version(version)
    try:
        seed = decode_unpadded_base64(seed_base64)
    except BadJsonError:
        raise ValueError("the key seed is not valid unpadded base64") from None
    if len(seed) != _SEED_BYTES:
        raise ValueError(f"an ed25519 seed is {_SEED_BYTES} bytes, this one is {len(seed)}")
    return SigningKey(seed, version)


def encode_verify_key_base64(verify_key: VerifyKeyLike | nacl.signing.VerifyKey) -> str:
    """The public key in unpadded base64, as ``/_matrix/key/v2/server`` publishes it."""
    return encode_unpadded_base64(verify_key.encode())


def decode_verify_key_bytes(key_id: str, key_bytes: bytes) -> VerifyKey:
    """A verify key from its key ID and the raw 32-byte public key.

    Raises :class:`~ranvier.errors.BadJsonError` for a key ID that is not
    ``ed25519:<version>`` or a key of the wrong length: such keys arrive in
    other servers' key responses. The version is not held to the grammar we
    use for our own keys, so a server that chose an odd version can still
    be verified.
    """
    algorithm, sep, version = key_id.partition(":")
    if not sep or not version:
        raise BadJsonError(f"key ID {key_id!r} is not of the form <algorithm>:<version>")
    if algorithm != ED25519:
        raise BadJsonError(f"key ID {key_id!r} is for unsupported algorithm {algorithm!r}")
    if len(key_bytes) != _PUBLIC_KEY_BYTES:
        raise BadJsonError(
            f"an ed25519 public key is {_PUBLIC_KEY_BYTES} bytes, key {key_id} has {len(key_bytes)}"
        )
    return VerifyKey(bytes(key_bytes), version)


def decode_verify_key_base64(algorithm: str, version: str, key_base64: str) -> VerifyKey:
    """A verify key from its algorithm, version and unpadded base64 public key."""
    return decode_verify_key_bytes(f"{algorithm}:{version}", decode_unpadded_base64(key_base64))


def read_signing_keys(source: str | Iterable[str]) -> list[SigningKey]:
    """Read a signing-key file's text (or its lines) into keys, in file order.

    Blank lines are skipped. Raises :class:`SigningKeyFileError` naming the
    line and what is wrong with it.
    """
    lines = source.splitlines() if isinstance(source, str) else source
    keys: list[SigningKey] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3:
            raise SigningKeyFileError(
                number,
                f"expected 3 fields 'ed25519 <version> <base64 seed>', found {len(fields)}",
            )
        algorithm, version, seed_base64 = fields
        try:
            key = decode_signing_key_base64(algorithm, version, seed_base64)
        except ValueError as exc:
            raise SigningKeyFileError(number, str(exc)) from None
        if version in seen:
            raise SigningKeyFileError(number, f"key version {version!r} appears twice")
        seen.add(version)
        keys.append(key)
    return keys


def write_signing_keys(keys: Iterable[SigningKeyLike]) -> str:
    """The text of a signing-key file holding ``keys``, one per line."""
    return "".join(f"{key.alg} {key.version} {encode_signing_key_base64(key)}\n" for key in keys)


def _signable(obj: Mapping[str, Any]) -> bytes:
    return encode_canonical_json(
        {name: value for name, value in obj.items() if name != "signatures" and name != "unsigned"}
    )


def _signatures_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    signatures = obj.get("signatures", {})
    if not isinstance(signatures, dict):
        raise BadJsonError(f"'signatures' must be an object, not {type(signatures).__name__}")
    return signatures


def sign_json(
    obj: Mapping[str, Any], server_name: str, signing_key: SigningKeyLike
) -> dict[str, Any]:
    """A copy of ``obj`` with ``server_name``'s signature made with ``signing_key``.

    ``obj`` itself is not changed: a caller may still hold it (for example the
    unsigned form of an event it is building), so the copy gets new
    ``signatures`` maps; other values are shared, not copied. Signatures
    already present, from this server or others, are kept, and ``unsigned``
    stays as it was.

    Raises :class:`~ranvier.errors.BadJsonError` if the object holds a value
    canonical JSON cannot encode, or ``signatures`` is not shaped as the spec
    says.
    """
    signature = signing_key.sign(_signable(obj)).signature
    signatures = {}
    for name, by_key in _signatures_of(obj).items():
        if not isinstance(by_key, dict):
            raise BadJsonError(f"signatures of {name!r} must be an object")
        signatures[name] = dict(by_key)
    signatures.setdefault(server_name, {})[key_id(signing_key)] = encode_unpadded_base64(signature)
    signed = dict(obj)
    signed["signatures"] = signatures
    return signed


def signature_key_ids(obj: Mapping[str, Any], server_name: str) -> list[str]:
    """The key IDs ``server_name`` signed ``obj`` with, whatever their algorithm.

    A verifier uses this to learn which of the server's keys it must fetch.
    """
    by_key = _signatures_of(obj).get(server_name)
    if not isinstance(by_key, dict):
        return []
    return [name for name in by_key if isinstance(name, str)]


def verify_signed_json(obj: Mapping[str, Any], server_name: str, verify_key: VerifyKeyLike) -> None:
    """Check ``server_name``'s signature on ``obj`` made with ``verify_key``.

    Returns nothing on success. Raises
    :class:`~ranvier.errors.InvalidSignatureError` whose message says which
    step failed: the object has no signatures, none from that server, none
    with that key ID, one that is not valid base64, or one that does not
    verify. An object holding values canonical JSON cannot encode raises
    :class:`~ranvier.errors.BadJsonError`, since no signature could cover it.
    """
    name = key_id(verify_key)
    signatures = obj.get("signatures")
    if not isinstance(signatures, dict) or not signatures:
        raise InvalidSignatureError("the object has no signatures")
    by_key = signatures.get(server_name)
    if not isinstance(by_key, dict) or not by_key:
        raise InvalidSignatureError(f"the object has no signature from {server_name}")
    signature_base64 = by_key.get(name)
    if signature_base64 is None:
        raise InvalidSignatureError(
            f"the object has no signature from {server_name} with key {name}"
            f" (it has {', '.join(sorted(map(str, by_key)))})"
        )
    if not isinstance(signature_base64, str):
        raise InvalidSignatureError(
            f"the signature from {server_name} with key {name} is not a string"
        )
    try:
        signature = decode_unpadded_base64(signature_base64)
    except BadJsonError:
        raise InvalidSignatureError(
            f"the signature from {server_name} with key {name} is not valid base64"
        ) from None
    if len(signature) != _SIGNATURE_BYTES:
        raise InvalidSignatureError(
            f"bad signature from {server_name} with key {name}: an ed25519 signature is"
            f" {_SIGNATURE_BYTES} bytes, this one is {len(signature)}"
        )
    message = _signable(obj)
    try:
        verify_key.verify(message, signature)
    except nacl.exceptions.BadSignatureError:
        raise InvalidSignatureError(
            f"bad signature from {server_name} with key {name}: it does not match the object"
        ) from None
