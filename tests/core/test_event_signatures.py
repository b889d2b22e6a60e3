"""Whose signatures an event needs, and checking them with keys valid at
the event's time, one event or a batch (checked in a worker thread or by an offload)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import pytest
import trio
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from ranvier.core.event_signatures import (
    THREAD_THRESHOLD,
    OffloadUnavailable,
    SignedMessage,
    check_event_signatures,
    find_signature_checks,
    offload_signature_checks,
    redacted_if_hash_mismatch,
    required_signers,
    run_signature_checks,
)
from ranvier.errors import InvalidSignatureError
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import hash_and_sign_event
from ranvier.protocol.signing import SigningKey, generate_signing_key
from ranvier.protocol.unpadded_base64 import encode_unpadded_base64
from ranvier.testing import KnownKeys

ROOM = "!room:a.test"
A_KEY = generate_signing_key("a1")
B_KEY = generate_signing_key("b1")
TS = 1_700_000_000_000
KEYS = {"a.test": A_KEY, "b.test": B_KEY}


def event(
    sender: str = "@alice:a.test",
    *,
    version: str = "10",
    ts: int = TS,
    content: Mapping[str, Any] | None = None,
    state_key: str | None = None,
    event_type: str = "m.room.message",
    signers: Mapping[str, SigningKey] | None = None,
) -> Pdu:
    fields: dict[str, Any] = {
        "type": event_type,
        "sender": sender,
        "room_id": ROOM,
        "content": dict(content or {"body": "hi"}),
        "prev_events": ["$prev"],
        "auth_events": [],
        "depth": 5,
        "origin_server_ts": ts,
    }
    if state_key is not None:
        fields["state_key"] = state_key
    signers = signers if signers is not None else {sender.partition(":")[2]: A_KEY}
    signed = dict(fields)
    for server, key in signers.items():
        signed = hash_and_sign_event(signed, version, server, key)
    if not signers:
        signed = hash_and_sign_event(fields, version, "x", A_KEY) | {"signatures": {}}
    return Pdu.from_json(signed, version)


def restricted_join(version: str, signers: Mapping[str, SigningKey]) -> Pdu:
    return event(
        "@bob:b.test",
        version=version,
        event_type="m.room.member",
        state_key="@bob:b.test",
        content={"membership": "join", "join_authorised_via_users_server": "@alice:a.test"},
        signers=signers,
    )


# Whose signatures.


def test_the_senders_server_signs() -> None:
    assert required_signers(event()) == ["a.test"]


def test_a_restricted_join_needs_the_authorising_server_too() -> None:
    assert required_signers(restricted_join("10", {"b.test": B_KEY})) == ["b.test", "a.test"]
    # Before v8 the key means nothing.
    assert required_signers(restricted_join("7", {"b.test": B_KEY})) == ["b.test"]
    # A user vouching for their own server's user adds no one.
    own = event(
        "@bob:b.test",
        event_type="m.room.member",
        state_key="@bob:b.test",
        content={"membership": "join", "join_authorised_via_users_server": "@carol:b.test"},
        signers={"b.test": B_KEY},
    )
    assert required_signers(own) == ["b.test"]


def test_a_third_party_invite_may_come_from_any_server() -> None:
    invite = event(
        "@alice:a.test",
        event_type="m.room.member",
        state_key="@dora:c.test",
        content={"membership": "invite", "third_party_invite": {"signed": {"token": "t"}}},
    )
    assert required_signers(invite) == []


# Checking them.


async def test_a_signed_event_passes() -> None:
    assert await check_event_signatures([event()], KnownKeys(KEYS)) == {}


async def test_a_bad_signature_fails() -> None:
    good = event()
    forged = Pdu.from_json(good.json | {"signatures": {"a.test": {"ed25519:a1": "A" * 86}}}, "10")
    failures = await check_event_signatures([forged], KnownKeys(KEYS))
    assert set(failures) == {forged.event_id}
    assert "does not match" in failures[forged.event_id].message


async def test_a_missing_signature_fails() -> None:
    unsigned = event(signers={})
    failures = await check_event_signatures([unsigned], KnownKeys(KEYS))
    assert "no signature from a.test" in failures[unsigned.event_id].message


async def test_a_signature_of_the_unredacted_event_fails() -> None:
    # Signed with the right key, but over the whole event: a signature covers
    # the redacted form only, so that it survives redaction.
    good = event(content={"body": "redaction drops this"})
    whole = {k: v for k, v in good.json.items() if k not in ("signatures", "unsigned")}
    signature = A_KEY.sign(encode_canonical_json(whole)).signature
    forged = Pdu.from_json(
        good.json | {"signatures": {"a.test": {"ed25519:a1": encode_unpadded_base64(signature)}}},
        "10",
    )
    failures = await check_event_signatures([forged], KnownKeys(KEYS))
    assert "does not match the event" in failures[forged.event_id].message


async def test_what_no_signature_covers_may_change() -> None:
    good = event()
    annotated = Pdu.from_json(good.json | {"unsigned": {"age": 12}}, "10")
    # The content is outside the signatures too (the content hash covers it).
    altered = Pdu.from_json(good.json | {"content": {"body": "altered"}}, "10")
    assert await check_event_signatures([annotated, altered], KnownKeys(KEYS)) == {}


@pytest.mark.parametrize(
    ("signature", "problem"),
    [("not base64!", "is not valid base64"), ("A" * 40, "is 30 bytes, not the 64")],
)
async def test_a_malformed_signature_fails(signature: str, problem: str) -> None:
    bad = Pdu.from_json(event().json | {"signatures": {"a.test": {"ed25519:a1": signature}}}, "10")
    failures = await check_event_signatures([bad], KnownKeys(KEYS))
    assert f"the signature from a.test with key ed25519:a1 {problem}" in (
        failures[bad.event_id].message
    )


async def test_keys_must_be_valid_at_the_events_time() -> None:
    old, new = event(ts=TS), event(ts=TS + 10, content={"body": "later"})
    keys = KnownKeys()
    keys.add("a.test", A_KEY, valid_until_ts=TS + 5)
    failures = await check_event_signatures([old, new], keys)
    assert set(failures) == {new.event_id}
    assert "cannot be trusted" in failures[new.event_id].message


async def test_keys_that_cannot_be_had_are_skipped_but_one_must_verify() -> None:
    other = generate_signing_key("gone")
    signed = event()
    # A second signature, with a key nobody can get: skipped.
    both = Pdu.from_json(
        signed.json
        | {"signatures": {"a.test": signed.signatures["a.test"] | {"ed25519:gone": "A" * 86}}},
        "10",
    )
    assert await check_event_signatures([both], KnownKeys(KEYS)) == {}
    only_unknown = event(signers={"a.test": other})
    failures = await check_event_signatures([only_unknown], KnownKeys(KEYS))
    assert "cannot be trusted" in failures[only_unknown.event_id].message


async def test_a_restricted_join_without_the_authorising_servers_signature() -> None:
    keys = KnownKeys(KEYS)
    assert (
        await check_event_signatures(
            [restricted_join("10", {"b.test": B_KEY, "a.test": A_KEY})], keys
        )
        == {}
    )
    lone = restricted_join("10", {"b.test": B_KEY})
    failures = await check_event_signatures([lone], keys)
    assert "no signature from a.test" in failures[lone.event_id].message


@pytest.mark.parametrize("count", [THREAD_THRESHOLD, THREAD_THRESHOLD * 20])
async def test_a_batch_finds_its_bad_events_and_asks_for_each_key_once(count: int) -> None:
    events = [event(content={"body": str(i)}, ts=TS + i) for i in range(count)]
    bad = events[count // 2]
    events[count // 2] = Pdu.from_json(
        bad.json | {"signatures": {"a.test": {"ed25519:a1": "A" * 86}}}, "10"
    )
    keys = KnownKeys(KEYS)
    failures = await check_event_signatures(events, keys)
    assert set(failures) == {bad.event_id}
    assert keys.lookups == 1


async def test_checks_found_once_can_be_run_in_parts() -> None:
    events = [event(content={"body": str(i)}, ts=TS + i) for i in range(5)]
    forged = Pdu.from_json(
        events[3].json | {"signatures": {"a.test": {"ed25519:a1": "A" * 86}}}, "10"
    )
    events[3] = forged
    keys = KnownKeys(KEYS)
    checks = await find_signature_checks(events, keys)
    assert [check.event for check in checks] == events
    assert keys.lookups == 1
    assert run_signature_checks(checks[:2]) == {}
    failures = run_signature_checks(checks[2:])
    assert set(failures) == {forged.event_id}
    assert "does not match" in failures[forged.event_id].message


# Checked by an offload.


class _Answer:
    def __init__(self, verdicts: list[bool] | None) -> None:
        self._verdicts = verdicts

    async def holds(self) -> list[bool]:
        await trio.lowlevel.checkpoint()
        if self._verdicts is None:
            raise OffloadUnavailable("it ended before answering")
        return self._verdicts

    def when_answered(self, callback: Callable[[list[bool] | None], None]) -> None:
        callback(self._verdicts)


class NaclOffload:
    """Checks what it is sent with PyNaCl, as the signature process does;
    or refuses, when sent or when asked for the answer."""

    def __init__(self, *, refuse: Literal["send", "holds"] | None = None) -> None:
        self._refuse = refuse
        #: How many signatures each request held, in order.
        self.sent: list[int] = []

    async def send(self, messages: Sequence[SignedMessage]) -> _Answer:
        await trio.lowlevel.checkpoint()
        self.sent.append(len(messages))
        if self._refuse == "send":
            raise OffloadUnavailable("not running")
        if self._refuse == "holds":
            return _Answer(None)
        return _Answer([_nacl_holds(*message) for message in messages])


def _nacl_holds(key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        VerifyKey(key).verify(message, signature)
    except BadSignatureError:
        return False
    return True


def _mixed_batch(count: int) -> tuple[list[Pdu], set[str]]:
    """``count`` events, some of them failing for each reason there is,
    and the IDs of those."""
    events = [event(content={"body": str(i)}, ts=TS + i) for i in range(count)]
    gone = generate_signing_key("gone")
    broken = {
        3: {"a.test": {"ed25519:a1": "A" * 86}},  # does not match
        7: {"a.test": {"ed25519:a1": "not base64!"}},
        11: {"a.test": {"ed25519:a1": "A" * 40}},  # too short
        13: {},  # no signature
    }
    for index, signatures in broken.items():
        events[index] = Pdu.from_json(events[index].json | {"signatures": signatures}, "10")
    # Signed with a key nobody can get.
    events[17] = event(content={"body": "17"}, ts=TS + 17, signers={"a.test": gone})
    # The last of a big batch is in its last chunk.
    events[-1] = Pdu.from_json(
        events[-1].json | {"signatures": {"a.test": {"ed25519:a1": "B" * 86}}}, "10"
    )
    bad = {events[index].event_id for index in (*broken, 17, len(events) - 1)}
    return events, bad


def _messages(failures: Mapping[str, InvalidSignatureError]) -> dict[str, str]:
    return {event_id: failure.message for event_id, failure in failures.items()}


@pytest.mark.parametrize("count", [THREAD_THRESHOLD + 4, 600])
async def test_an_offload_finds_what_threads_find(count: int) -> None:
    events, bad = _mixed_batch(count)
    in_threads = await check_event_signatures(events, KnownKeys(KEYS))
    assert set(in_threads) == bad
    offload = NaclOffload()
    offloaded = await check_event_signatures(events, KnownKeys(KEYS), offload=offload)
    assert _messages(offloaded) == _messages(in_threads)
    # Every signature with its key went to the offload, a chunk at a time:
    # all but those of the events failing on their shape or their keys.
    assert sum(offload.sent) == count - 4
    assert len(offload.sent) == -(-count // 256)


async def test_a_small_batch_is_not_offloaded() -> None:
    events, bad = _mixed_batch(THREAD_THRESHOLD + 4)
    events = events[:THREAD_THRESHOLD]
    offload = NaclOffload()
    failures = await check_event_signatures(events, KnownKeys(KEYS), offload=offload)
    assert set(failures) == bad & {e.event_id for e in events}
    assert offload.sent == []


@pytest.mark.parametrize("refuse", ["send", "holds"])
async def test_threads_check_what_an_offload_cannot(refuse: Literal["send", "holds"]) -> None:
    events, bad = _mixed_batch(600)
    offload = NaclOffload(refuse=refuse)
    failures = await check_event_signatures(events, KnownKeys(KEYS), offload=offload)
    assert _messages(failures) == _messages(await check_event_signatures(events, KnownKeys(KEYS)))
    assert set(failures) == bad
    # It was asked for every chunk.
    assert len(offload.sent) == 3


@pytest.mark.parametrize("refuse", [None, "holds"])
async def test_the_failures_reach_a_callback_as_the_offload_answers(
    refuse: Literal["holds"] | None,
) -> None:
    events, bad = _mixed_batch(THREAD_THRESHOLD + 4)
    checks = await find_signature_checks(events, KnownKeys(KEYS))
    sent = await offload_signature_checks(checks, NaclOffload(refuse=refuse))
    got: list[dict[str, InvalidSignatureError] | None] = []
    sent.when_checked(got.append)
    if refuse is None:
        # The same failures as waiting for them, those of the events'
        # shapes and keys (found before the offload) among them.
        (failures,) = got
        assert failures is not None
        assert _messages(failures) == _messages(run_signature_checks(checks))
        assert set(failures) == bad
    else:
        assert got == [None]


# Content hashes.


def test_an_event_whose_hash_matches_is_kept_whole() -> None:
    whole = event()
    assert redacted_if_hash_mismatch(whole) is whole


def test_an_event_whose_hash_does_not_match_is_kept_redacted() -> None:
    whole = event(event_type="m.room.topic", state_key="", content={"topic": "true"})
    altered = Pdu.from_json(whole.json | {"content": {"topic": "a lie"}}, "10")
    kept = redacted_if_hash_mismatch(altered)
    assert kept.event_id == whole.event_id
    assert kept.content == {}
    assert kept.signatures == whole.signatures
