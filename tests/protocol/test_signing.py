import copy
import io
import json
import re
from pathlib import Path
from typing import Any, cast

import nacl.signing
import pytest
import signedjson.key
import signedjson.sign
import signedjson.types
from hypothesis import given, settings
from hypothesis import strategies as st

from ranvier.errors import BadJsonError, InvalidSignatureError
from ranvier.protocol.canonical import CANONICAL_INT_MAX, CANONICAL_INT_MIN
from ranvier.protocol.signing import (
    ED25519,
    SigningKey,
    SigningKeyFileError,
    VerifyKey,
    decode_signing_key_base64,
    decode_verify_key_base64,
    decode_verify_key_bytes,
    encode_signing_key_base64,
    encode_verify_key_base64,
    generate_key_version,
    generate_signing_key,
    get_verify_key,
    key_id,
    read_signing_keys,
    sign_json,
    signature_key_ids,
    verify_signed_json,
    write_signing_keys,
)
from ranvier.protocol.unpadded_base64 import decode_unpadded_base64, encode_unpadded_base64

VECTORS = json.loads(
    (Path(__file__).parent.parent / "data" / "spec-vectors" / "json-signing.json").read_text(
        "utf-8"
    )
)
SPEC_KEY = VECTORS["signing_key"]


def _theirs(key: SigningKey) -> signedjson.types.SigningKey:
    # signedjson's typing Protocols are not met statically even by nacl's own
    # keys (signedjson silences this for the keys it makes); at run time our
    # keys are what its functions expect, which is what these tests check.
    return cast(signedjson.types.SigningKey, key)


def _theirs_verify(key: VerifyKey) -> signedjson.types.VerifyKey:
    return cast(signedjson.types.VerifyKey, key)


def _spec_key() -> SigningKey:
    return decode_signing_key_base64(SPEC_KEY["algorithm"], "1", SPEC_KEY["seed_base64"])


# --- the spec's examples ---------------------------------------------------------


def test_spec_key() -> None:
    key = _spec_key()
    assert key_id(key) == SPEC_KEY["key_id"]
    assert encode_verify_key_base64(key.verify_key) == SPEC_KEY["derived_public_key_base64"]


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[c["name"] for c in VECTORS["cases"]])
def test_spec_examples(case: dict[str, Any]) -> None:
    key = _spec_key()
    signed = sign_json(case["input"], SPEC_KEY["server_name"], key)
    assert signed == case["expected"]
    verify_signed_json(case["expected"], SPEC_KEY["server_name"], key.verify_key)
    # signedjson agrees that the spec's signature is valid for this key.
    signedjson.sign.verify_signed_json(
        case["expected"], SPEC_KEY["server_name"], signedjson.key.get_verify_key(_theirs(key))
    )


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[c["name"] for c in VECTORS["cases"]])
def test_spec_signature_is_over_the_canonical_bytes(case: dict[str, Any]) -> None:
    key = _spec_key()
    signature = case["expected"]["signatures"]["domain"]["ed25519:1"]
    key.verify_key.verify(
        case["derived_signed_bytes"].encode("utf-8"), decode_unpadded_base64(signature)
    )


# --- sign_json ---------------------------------------------------------------------


def test_sign_json_does_not_change_its_input() -> None:
    original: dict[str, Any] = {
        "a": {"b": 1},
        "signatures": {"other.example": {"ed25519:x": "c2ln"}},
        "unsigned": {"age": 5},
    }
    before = copy.deepcopy(original)
    signed = sign_json(original, "example.org", generate_signing_key("k"))
    assert original == before
    assert signed is not original
    assert signed["signatures"] is not original["signatures"]
    assert signed["signatures"]["other.example"] is not original["signatures"]["other.example"]


def test_sign_json_keeps_other_signatures_and_unsigned() -> None:
    first, second = generate_signing_key("one"), generate_signing_key("two")
    other = generate_signing_key("theirs")
    obj = sign_json({"a": 1, "unsigned": {"age": 5}}, "other.example", other)
    obj = sign_json(obj, "example.org", first)
    obj = sign_json(obj, "example.org", second)
    assert obj["unsigned"] == {"age": 5}
    assert set(obj["signatures"]) == {"other.example", "example.org"}
    assert signature_key_ids(obj, "example.org") == ["ed25519:one", "ed25519:two"]
    assert signature_key_ids(obj, "nobody.example") == []
    verify_signed_json(obj, "other.example", other.verify_key)
    verify_signed_json(obj, "example.org", first.verify_key)
    verify_signed_json(obj, "example.org", second.verify_key)


def test_resigning_with_the_same_key_replaces_the_signature() -> None:
    key = generate_signing_key("k")
    once = sign_json({"a": 1}, "example.org", key)
    twice = sign_json(once, "example.org", key)
    assert twice == once


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"a": 1.5}, r"floats are not allowed .*\$\.a"),
        ({"a": 1, "signatures": []}, "'signatures' must be an object"),
        ({"a": 1, "signatures": {"x": "y"}}, "signatures of 'x' must be an object"),
    ],
)
def test_sign_json_refuses_bad_objects(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(BadJsonError, match=message):
        sign_json(obj, "example.org", generate_signing_key("k"))


# --- verify_signed_json: each failure says what failed ---------------------------------

_KEY = generate_signing_key("good")
_SIGNED = sign_json({"a": 1, "b": ["c"]}, "example.org", _KEY)
_SIGNATURE = _SIGNED["signatures"]["example.org"]["ed25519:good"]


def _with_signatures(signatures: Any) -> dict[str, Any]:
    return {"a": 1, "b": ["c"], "signatures": signatures}


def _flip_one_bit(signature_base64: str) -> str:
    raw = bytearray(decode_unpadded_base64(signature_base64))
    raw[10] ^= 0x01
    return encode_unpadded_base64(bytes(raw))


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"a": 1, "b": ["c"]}, "^the object has no signatures$"),
        (_with_signatures({}), "^the object has no signatures$"),
        (_with_signatures("nope"), "^the object has no signatures$"),
        (
            _with_signatures({"other.example": {"ed25519:good": _SIGNATURE}}),
            "^the object has no signature from example.org$",
        ),
        (
            _with_signatures({"example.org": {"ed25519:old": _SIGNATURE}}),
            r"^the object has no signature from example.org with key ed25519:good"
            r" \(it has ed25519:old\)$",
        ),
        (
            _with_signatures({"example.org": {"ed25519:good": 12}}),
            "with key ed25519:good is not a string",
        ),
        (
            _with_signatures({"example.org": {"ed25519:good": "not base64!"}}),
            "^the signature from example.org with key ed25519:good is not valid base64$",
        ),
        (
            _with_signatures({"example.org": {"ed25519:good": _SIGNATURE[:40]}}),
            "^bad signature from example.org with key ed25519:good: an ed25519 signature is 64",
        ),
        (
            _with_signatures({"example.org": {"ed25519:good": _flip_one_bit(_SIGNATURE)}}),
            "^bad signature from example.org with key ed25519:good: it does not match",
        ),
        (
            {**_SIGNED, "a": 2},
            "^bad signature from example.org with key ed25519:good: it does not match",
        ),
    ],
)
def test_verify_failures_say_what_failed(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSignatureError, match=message) as info:
        verify_signed_json(obj, "example.org", _KEY.verify_key)
    assert info.value.errcode == "M_UNAUTHORIZED"
    assert info.value.http_status == 401


def test_verify_with_the_wrong_key_of_the_right_id() -> None:
    impostor = generate_signing_key("good")
    with pytest.raises(InvalidSignatureError, match="does not match"):
        verify_signed_json(_SIGNED, "example.org", impostor.verify_key)


def test_verify_refuses_objects_canonical_json_cannot_hold() -> None:
    with pytest.raises(BadJsonError, match=r"\$\.a"):
        verify_signed_json({**_SIGNED, "a": 1.5}, "example.org", _KEY.verify_key)


# --- properties ---------------------------------------------------------------------------

_names = st.text(min_size=1, max_size=8)
_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=CANONICAL_INT_MIN, max_value=CANONICAL_INT_MAX)
    | st.text(max_size=20)
)
_values = st.recursive(
    _leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_names, children, max_size=4),
    max_leaves=15,
)
_objects = st.dictionaries(
    _names.filter(lambda name: name not in ("signatures", "unsigned")), _values, max_size=6
)
_versions = st.from_regex(r"[a-zA-Z0-9_]{1,8}", fullmatch=True)
_server_names = st.from_regex(r"[a-z0-9.-]{1,20}(:[0-9]{1,5})?", fullmatch=True)


@settings(max_examples=100, deadline=None)
@given(_objects, _server_names, _versions, st.integers(0, 2**32))
def test_sign_then_verify(obj: dict[str, Any], server: str, version: str, seed: int) -> None:
    key = SigningKey(seed.to_bytes(32, "big"), version)
    signed = sign_json(obj, server, key)
    assert {name: value for name, value in signed.items() if name != "signatures"} == obj
    verify_signed_json(signed, server, key.verify_key)
    verify_signed_json(signed, server, get_verify_key(key))


@settings(max_examples=100, deadline=None)
@given(_objects, st.data())
def test_tampering_with_a_signed_field_is_caught(obj: dict[str, Any], data: st.DataObject) -> None:
    signed = sign_json(obj, "example.org", _KEY)
    tampered = dict(signed)
    names = list(obj)
    change = data.draw(st.sampled_from(["add", "remove", "replace"] if names else ["add"]))
    if change == "add":
        name = data.draw(_names.filter(lambda n: n not in signed and n != "unsigned"))
        tampered[name] = data.draw(_values)
    else:
        name = data.draw(st.sampled_from(names))
        if change == "remove":
            del tampered[name]
        else:
            tampered[name] = data.draw(_values.filter(lambda v: v != obj[name]))
    with pytest.raises(InvalidSignatureError, match="does not match"):
        verify_signed_json(tampered, "example.org", _KEY.verify_key)


@settings(max_examples=100, deadline=None)
@given(_objects, st.integers(0, 63), st.integers(0, 7))
def test_tampering_with_the_signature_is_caught(obj: dict[str, Any], byte: int, bit: int) -> None:
    signed = sign_json(obj, "example.org", _KEY)
    raw = bytearray(decode_unpadded_base64(signed["signatures"]["example.org"]["ed25519:good"]))
    raw[byte] ^= 1 << bit
    signed["signatures"]["example.org"]["ed25519:good"] = encode_unpadded_base64(bytes(raw))
    with pytest.raises(InvalidSignatureError, match="bad signature"):
        verify_signed_json(signed, "example.org", _KEY.verify_key)


@settings(max_examples=50, deadline=None)
@given(_objects, _versions.filter(lambda v: v != "good"))
def test_moving_the_signature_to_another_key_id_is_caught(
    obj: dict[str, Any], version: str
) -> None:
    signed = sign_json(obj, "example.org", _KEY)
    by_key = signed["signatures"]["example.org"]
    by_key[f"ed25519:{version}"] = by_key.pop("ed25519:good")
    other = SigningKey(bytes(_KEY), version)  # same key bytes, other ID
    verify_signed_json(signed, "example.org", other.verify_key)  # its ID now matches
    with pytest.raises(
        InvalidSignatureError,
        match=r"^the object has no signature from example\.org with key ed25519:good",
    ):
        verify_signed_json(signed, "example.org", _KEY.verify_key)


@settings(max_examples=100, deadline=None)
@given(_objects, _values, _values)
def test_unsigned_does_not_matter(obj: dict[str, Any], before: Any, after: Any) -> None:
    signed = sign_json({**obj, "unsigned": before}, "example.org", _KEY)
    assert signed["unsigned"] == before
    verify_signed_json({**signed, "unsigned": after}, "example.org", _KEY.verify_key)
    without = {name: value for name, value in signed.items() if name != "unsigned"}
    verify_signed_json(without, "example.org", _KEY.verify_key)


# --- cross-checks with signedjson ------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(_objects, _server_names, _versions, st.integers(0, 2**32))
def test_same_signatures_as_signedjson(
    obj: dict[str, Any], server: str, version: str, seed: int
) -> None:
    ours = SigningKey(seed.to_bytes(32, "big"), version)
    theirs = signedjson.key.decode_signing_key_base64(
        ED25519, version, encode_signing_key_base64(ours)
    )
    # signedjson signs in place, so it gets a copy.
    signed_by_them = signedjson.sign.sign_json(copy.deepcopy(obj), server, theirs)
    signed_by_us = sign_json(obj, server, ours)
    assert signed_by_us == signed_by_them
    # Each side's verification accepts the other's signature and key.
    signedjson.sign.verify_signed_json(
        signed_by_us, server, signedjson.key.get_verify_key(_theirs(ours))
    )
    verify_signed_json(signed_by_them, server, signedjson.key.get_verify_key(theirs))
    verify_signed_json(signed_by_them, server, ours.verify_key)


def test_signedjson_keys_work_here() -> None:
    theirs = signedjson.key.generate_signing_key("a_b")
    their_verify_key = signedjson.key.get_verify_key(theirs)
    assert key_id(theirs) == "ed25519:a_b"
    assert key_id(their_verify_key) == "ed25519:a_b"
    signed = sign_json({"x": 1}, "example.org", theirs)
    assert list(signed["signatures"]["example.org"]) == ["ed25519:a_b"]
    verify_signed_json(signed, "example.org", their_verify_key)
    verify_signed_json(signed, "example.org", get_verify_key(theirs))
    assert encode_verify_key_base64(their_verify_key) == signedjson.key.encode_verify_key_base64(
        their_verify_key
    )
    assert encode_signing_key_base64(theirs) == signedjson.key.encode_signing_key_base64(theirs)
    assert read_signing_keys(write_signing_keys([theirs]))[0].encode() == theirs.encode()


def test_our_keys_work_with_signedjson() -> None:
    ours = generate_signing_key("a_c")
    assert isinstance(ours, nacl.signing.SigningKey)
    assert isinstance(ours.verify_key, nacl.signing.VerifyKey)
    assert (ours.alg, ours.version) == (ED25519, "a_c")
    assert (ours.verify_key.alg, ours.verify_key.version) == (ED25519, "a_c")
    signed = signedjson.sign.sign_json({"x": 1}, "example.org", _theirs(ours))
    signedjson.sign.verify_signed_json(signed, "example.org", _theirs_verify(ours.verify_key))
    signedjson.sign.verify_signed_json(
        signed, "example.org", signedjson.key.get_verify_key(_theirs(ours))
    )
    assert signedjson.sign.signature_ids(signed, "example.org") == signature_key_ids(
        signed, "example.org"
    )


# --- verify keys ------------------------------------------------------------------------


def test_decode_verify_key() -> None:
    key = generate_signing_key("v")
    public = bytes(key.verify_key)
    decoded = decode_verify_key_bytes("ed25519:some.version-1", public)
    assert isinstance(decoded, VerifyKey)
    assert (decoded.alg, decoded.version) == (ED25519, "some.version-1")
    assert decoded == key.verify_key
    from_base64 = decode_verify_key_base64(ED25519, "v", encode_verify_key_base64(key.verify_key))
    assert from_base64 == key.verify_key
    assert key_id(from_base64) == "ed25519:v"
    theirs = signedjson.key.decode_verify_key_bytes("ed25519:v", public)
    assert bytes(theirs) == bytes(decoded)


@pytest.mark.parametrize(
    ("key_id_text", "key_bytes", "message"),
    [
        ("ed25519", bytes(32), "not of the form <algorithm>:<version>"),
        ("ed25519:", bytes(32), "not of the form <algorithm>:<version>"),
        ("curve25519:x", bytes(32), "unsupported algorithm 'curve25519'"),
        ("ed25519:x", bytes(31), "an ed25519 public key is 32 bytes, key ed25519:x has 31"),
        ("ed25519:x", bytes(33), "has 33"),
    ],
)
def test_decode_verify_key_refuses(key_id_text: str, key_bytes: bytes, message: str) -> None:
    with pytest.raises(BadJsonError, match=re.escape(message)):
        decode_verify_key_bytes(key_id_text, key_bytes)


def test_decode_verify_key_base64_refuses_bad_base64() -> None:
    with pytest.raises(BadJsonError, match="invalid base64"):
        decode_verify_key_base64(ED25519, "x", "not base64!")


# --- key generation and key files ---------------------------------------------------------


def test_generate_signing_key() -> None:
    first, second = generate_signing_key("a_1"), generate_signing_key("a_1")
    assert first.encode() != second.encode()
    assert len(first.encode()) == 32
    assert key_id(first) == "ed25519:a_1"


@pytest.mark.parametrize("version", ["", "a-b", "a:b", "a b", "é", "a.b"])
def test_bad_versions_are_refused(version: str) -> None:
    with pytest.raises(ValueError, match="a key version must be one or more of"):
        generate_signing_key(version)


def test_generate_key_version() -> None:
    versions = {generate_key_version() for _ in range(50)}
    assert all(re.fullmatch(r"a_[a-zA-Z0-9]{4}", version) for version in versions)
    assert len(versions) > 40


def test_repr_hides_the_seed() -> None:
    key = generate_signing_key("r")
    text = repr(key)
    assert "ed25519:r" in text
    assert encode_signing_key_base64(key) not in text
    assert encode_verify_key_base64(key.verify_key) in text
    assert "ed25519:r" in repr(key.verify_key)


def test_key_file_round_trip() -> None:
    keys = [generate_signing_key("a_1"), generate_signing_key("b_2")]
    text = write_signing_keys(keys)
    lines = text.splitlines()
    assert len(lines) == 2
    assert lines[0] == f"ed25519 a_1 {encode_signing_key_base64(keys[0])}"
    assert text.endswith("\n")
    for source in (text, lines, io.StringIO(text)):
        back = read_signing_keys(source)
        assert [key_id(key) for key in back] == ["ed25519:a_1", "ed25519:b_2"]
        assert [key.encode() for key in back] == [key.encode() for key in keys]
    # signedjson reads our files and writes files we read.
    theirs = signedjson.key.read_signing_keys(io.StringIO(text))
    assert [key.encode() for key in theirs] == [key.encode() for key in keys]
    stream = io.StringIO()
    signedjson.key.write_signing_keys(stream, theirs)
    assert stream.getvalue() == text


def test_key_file_skips_blank_lines() -> None:
    key = generate_signing_key("k")
    text = "\n  \n" + write_signing_keys([key]) + "\n"
    assert [k.encode() for k in read_signing_keys(text)] == [key.encode()]
    assert read_signing_keys("") == []


def test_spec_seed_in_a_key_file() -> None:
    (key,) = read_signing_keys(f"ed25519 1 {SPEC_KEY['seed_base64']}\n")
    assert encode_verify_key_base64(key.verify_key) == SPEC_KEY["derived_public_key_base64"]


_SEED = encode_unpadded_base64(bytes(range(32)))


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("ed25519 a_1", 1, "expected 3 fields 'ed25519 <version> <base64 seed>', found 2"),
        (f"ed25519 a_1 {_SEED} extra", 1, "found 4"),
        (f"ed25519 a_1 {_SEED}\nrsa a_2 {_SEED}", 2, "unsupported signing key algorithm 'rsa'"),
        (f"ed25519 a-1 {_SEED}", 1, "a key version must be one or more of [a-zA-Z0-9_]"),
        ("ed25519 a_1 not-base64!", 1, "the key seed is not valid unpadded base64"),
        (f"ed25519 a_1 {_SEED[:20]}", 1, "an ed25519 seed is 32 bytes, this one is 15"),
        (f"\ned25519 a_1 {_SEED}\n\ned25519 a_1 {_SEED}", 4, "key version 'a_1' appears twice"),
    ],
)
def test_malformed_key_files(text: str, line: int, problem: str) -> None:
    with pytest.raises(SigningKeyFileError) as info:
        read_signing_keys(text)
    assert info.value.line == line
    assert problem in info.value.problem
    assert str(info.value).startswith(f"signing key file, line {line}: ")
    assert _SEED not in str(info.value)
    assert isinstance(info.value, ValueError)
