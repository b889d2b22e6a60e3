import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ranvier.errors import BadJsonError, InvalidSignatureError
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.hashing import (
    compute_content_hash,
    compute_event_id,
    compute_reference_hash,
    compute_room_id,
    content_hash_matches,
    encode_signed_form,
    event_id_from_signed_form,
    hash_and_sign_event,
)
from ranvier.protocol.redaction import redact
from ranvier.protocol.room_versions import KNOWN_ROOM_VERSIONS
from ranvier.protocol.signing import SigningKey, decode_signing_key_base64, verify_signed_json
from ranvier.protocol.unpadded_base64 import decode_unpadded_base64, encode_unpadded_base64

DATA = Path(__file__).parent.parent / "data"


def _load(*parts: str) -> Any:
    return json.loads(DATA.joinpath(*parts).read_text("utf-8"))


SIGNING = _load("spec-vectors", "event-signing.json")
REFERENCE = _load("spec-vectors", "derived", "reference-hashes.json")
PEER_IDS = _load("peer-vectors", "gomatrixserverlib-event-ids.json")


def _key(vectors: dict[str, Any]) -> SigningKey:
    version = vectors["signing_key"]["key_id"].split(":")[1]
    return decode_signing_key_base64("ed25519", version, vectors["signing_key"]["seed_base64"])


SPEC_KEY = _key(SIGNING)
SIGNING_CASES = SIGNING["cases"] + SIGNING["historical_cases"]


# --- the spec's event-signing examples ---


@pytest.mark.parametrize("case", SIGNING_CASES, ids=lambda c: c["name"])
def test_content_hash_of_spec_examples(case: dict[str, Any]) -> None:
    assert compute_content_hash(case["input"]) == case["expected"]["hashes"]["sha256"]
    assert content_hash_matches(case["expected"])
    if "derived" in case:
        preimage = case["derived"]["content_hash_preimage"].encode()
        digest = hashlib.sha256(preimage).digest()
        assert compute_content_hash(case["input"]) == encode_unpadded_base64(digest)


@pytest.mark.parametrize("case", SIGNING_CASES, ids=lambda c: c["name"])
def test_hash_and_sign_spec_examples(case: dict[str, Any]) -> None:
    before = copy.deepcopy(case["input"])
    # The examples are room v1-era events; any version before v11 redacts them alike.
    for room_version in ("1", "6", "10"):
        assert (
            hash_and_sign_event(case["input"], room_version, "domain", SPEC_KEY)
            == (case["expected"])
        )
    assert case["input"] == before


@pytest.mark.parametrize("case", SIGNING["cases"], ids=lambda c: c["name"])
def test_signature_covers_the_redacted_event(case: dict[str, Any]) -> None:
    derived = case["derived"]
    redacted = redact(case["expected"], "1")
    unsigned = {k: v for k, v in redacted.items() if k not in ("signatures", "unsigned")}
    assert encode_canonical_json(unsigned) == derived["redacted_signing_preimage"].encode()
    verify_signed_json(redacted, "domain", SPEC_KEY.verify_key)
    # Redaction keeps the signature valid; changing the content does not break it either,
    # which is why the content hash exists.
    tampered = case["expected"] | {"content": {"body": "something else"}}
    verify_signed_json(redact(tampered, "1"), "domain", SPEC_KEY.verify_key)
    assert not content_hash_matches(tampered)
    # The v11 algorithm drops `origin`, so the same event signs differently.
    v11 = hash_and_sign_event(case["input"], "11", "domain", SPEC_KEY)
    assert (
        v11["signatures"]["domain"]["ed25519:1"] == derived["signature_if_v11_redaction_were_used"]
    )


def test_a_signature_over_the_wrong_redaction_does_not_verify() -> None:
    case = SIGNING["cases"][0]
    with pytest.raises(InvalidSignatureError):
        verify_signed_json(redact(case["expected"], "11"), "domain", SPEC_KEY.verify_key)


def test_existing_signatures_and_hashes_are_kept() -> None:
    event = SIGNING["cases"][0]["input"] | {
        "signatures": {"other.org": {"ed25519:a": "X"}},
        "hashes": {"sha256": "stale", "sha512": "kept"},
    }
    signed = hash_and_sign_event(event, "10", "domain", SPEC_KEY)
    assert signed["signatures"]["other.org"] == {"ed25519:a": "X"}
    assert set(signed["signatures"]["domain"]) == {"ed25519:1"}
    assert signed["hashes"] == {"sha256": compute_content_hash(event), "sha512": "kept"}


def test_content_hash_mismatches() -> None:
    event = SIGNING["cases"][1]["expected"]
    assert content_hash_matches(event)
    assert not content_hash_matches({k: v for k, v in event.items() if k != "hashes"})
    assert not content_hash_matches(event | {"hashes": "x"})
    assert not content_hash_matches(event | {"hashes": {"sha256": 5}})
    assert not content_hash_matches(event | {"hashes": {"sha512": "x"}})
    assert not content_hash_matches(event | {"depth": 4})
    # What the content hash leaves out can change freely.
    assert content_hash_matches(event | {"unsigned": {"age": 5}, "signatures": {}})


def test_content_hash_refuses_what_canonical_json_cannot_hold() -> None:
    with pytest.raises(BadJsonError):
        compute_content_hash({"type": "m.room.message", "content": {"n": 1.5}})


# --- reference hashes, event IDs and v12 room IDs ---


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: c["name"])
def test_reference_hash_vectors(case: dict[str, Any]) -> None:
    room_version = case["room_version"]
    signed = case["signed_event"]
    key = _key(REFERENCE)
    assert hash_and_sign_event(case["unsigned_input"], room_version, "domain", key) == signed
    verify_signed_json(redact(signed, room_version), "domain", key.verify_key)
    reference_hash = compute_reference_hash(signed, room_version)
    assert reference_hash == hashlib.sha256(case["reference_hash_preimage"].encode()).digest()
    if "reference_hash_sha256_hex" in case:
        assert reference_hash.hex() == case["reference_hash_sha256_hex"]
    assert compute_event_id(signed, room_version) == case["event_id"]
    assert compute_event_id(signed, KNOWN_ROOM_VERSIONS[room_version]) == case["event_id"]
    if "room_id" in case:
        assert compute_room_id(signed) == case["room_id"]
        assert compute_room_id(signed, "12") == case["room_id"]


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: c["name"])
def test_the_signed_form_is_what_the_id_hashes_and_the_signature_signs(
    case: dict[str, Any],
) -> None:
    room_version = case["room_version"]
    signed = case["signed_event"]
    form = encode_signed_form(signed, room_version)
    assert form == case["reference_hash_preimage"].encode()
    assert event_id_from_signed_form(form, room_version) == case["event_id"]
    signature = decode_unpadded_base64(signed["signatures"]["domain"]["ed25519:1"])
    _key(REFERENCE).verify_key.verify(form, signature)
    # Neither what is outside every signature nor what redaction drops changes it.
    annotated = signed | {"unsigned": {"age": 7}, "signatures": {"other.org": {"ed25519:x": "Y"}}}
    assert encode_signed_form(annotated, room_version) == form
    redacted = redact(signed, room_version)
    assert encode_signed_form(redacted, room_version) == form


def test_the_signed_form_of_the_spec_examples_is_the_signing_preimage() -> None:
    for case in SIGNING["cases"]:
        form = encode_signed_form(case["expected"], "1")
        assert form == case["derived"]["redacted_signing_preimage"].encode()


def test_event_ids_from_signed_forms_follow_the_version() -> None:
    form = encode_signed_form(REFERENCE["cases"][0]["signed_event"], "4")
    v3, v4 = event_id_from_signed_form(form, "3"), event_id_from_signed_form(form, "4")
    assert decode_unpadded_base64(v3[1:]) == decode_unpadded_base64(v4[1:], urlsafe=True)
    assert decode_unpadded_base64(v4[1:], urlsafe=True) == hashlib.sha256(form).digest()
    for version in ("1", "2"):
        with pytest.raises(BadJsonError, match="no computed event IDs"):
            event_id_from_signed_form(form, version)


def test_v3_and_v4_ids_differ_only_in_alphabet() -> None:
    case = REFERENCE["cases"][0]
    v3 = compute_event_id(case["signed_event"], "3")
    v4 = compute_event_id(case["signed_event"], "4")
    assert v3 != v4
    assert "+" in v3 or "/" in v3
    assert decode_unpadded_base64(v3[1:]) == decode_unpadded_base64(v4[1:], urlsafe=True)


@pytest.mark.parametrize("case", PEER_IDS["cases"], ids=lambda c: c["name"])
def test_gomatrixserverlib_event_ids(case: dict[str, Any]) -> None:
    event = case["event"]
    assert content_hash_matches(event)
    if case["room_version"] in ("1", "2"):
        with pytest.raises(BadJsonError, match="no computed event IDs"):
            compute_event_id(event, case["room_version"])
        assert event["event_id"] == case["expected_event_id"]
        return
    assert compute_event_id(event, case["room_version"]) == case["expected_event_id"]
    if "reference_hash_preimage" in case:
        preimage = case["reference_hash_preimage"].encode()
        assert compute_reference_hash(event, case["room_version"]) == (
            hashlib.sha256(preimage).digest()
        )


def test_room_id_is_refused_where_it_is_not_computed() -> None:
    create = REFERENCE["cases"][4]["signed_event"]
    assert create["type"] == "m.room.create"
    with pytest.raises(BadJsonError, match="no computed room IDs"):
        compute_room_id(create, "11")
    with pytest.raises(BadJsonError, match="must not have a room_id"):
        compute_room_id(create | {"room_id": "!x:domain"})
    with pytest.raises(BadJsonError, match=r"m\.room\.create"):
        compute_room_id(create | {"type": "m.room.member"})
    with pytest.raises(BadJsonError, match=r"m\.room\.create"):
        compute_room_id(create | {"state_key": "x"})


# --- properties ---

_extra = st.dictionaries(
    st.text(min_size=1, max_size=6),
    st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=6),
    max_size=3,
)


@given(extra_content=_extra, unsigned=_extra, signatures=_extra)
def test_event_id_ignores_what_redaction_and_signing_drop(
    extra_content: dict[str, Any], unsigned: dict[str, Any], signatures: dict[str, Any]
) -> None:
    case = REFERENCE["cases"][3]
    event = case["signed_event"]
    changed = event | {
        "content": event["content"] | extra_content,
        "unsigned": unsigned,
        "signatures": {"elsewhere": signatures},
    }
    assert compute_event_id(changed, "11") == case["event_id"]
    # A redacted event keeps its ID.
    assert compute_event_id(redact(changed, "11"), "11") == case["event_id"]


@given(depth=st.integers(0, 2**53 - 1), ts=st.integers(0, 2**53 - 1))
def test_event_id_covers_what_redaction_keeps(depth: int, ts: int) -> None:
    case = REFERENCE["cases"][3]
    event = case["signed_event"]
    changed = event | {"depth": depth, "origin_server_ts": ts}
    same = depth == event["depth"] and ts == event["origin_server_ts"]
    assert (compute_event_id(changed, "11") == case["event_id"]) == same
