"""The signature process's program, called in this process: its records,
verdicts and framing, with real ed25519 keys."""

from __future__ import annotations

import io
import struct

import pytest
from nacl.signing import SigningKey

from ranvier._signature_worker import answer, serve

_LENGTH = struct.Struct("!I")
ALICE = SigningKey(b"\x01" * 32)
BOB = SigningKey(b"\x02" * 32)


def _record(key: bytes, signature: bytes, message: bytes) -> bytes:
    return key + signature + _LENGTH.pack(len(message)) + message


def _signed(signer: SigningKey, message: bytes, *, key: SigningKey | None = None) -> bytes:
    """A record of ``signer``'s signature on ``message``, claimed for ``key``."""
    public = (key or signer).verify_key.encode()
    return _record(public, signer.sign(message).signature, message)


def _frame(records: bytes) -> bytes:
    return _LENGTH.pack(len(records)) + records


def _verdicts(reply: bytes) -> list[int]:
    (count,) = _LENGTH.unpack_from(reply)
    assert len(reply) == _LENGTH.size + count
    return list(reply[_LENGTH.size :])


def test_each_record_gets_its_verdict_in_order() -> None:
    forged = bytearray(ALICE.sign(b"second").signature)
    forged[10] ^= 0x01
    records = b"".join(
        [
            _signed(ALICE, b"first"),
            _record(ALICE.verify_key.encode(), bytes(forged), b"second"),
            _signed(BOB, b"third"),
            # Alice's signature, presented as Bob's.
            _signed(ALICE, b"fourth", key=BOB),
            _signed(BOB, b""),
        ]
    )
    assert _verdicts(answer(records)) == [1, 0, 1, 0, 1]


def test_a_signature_of_other_bytes_does_not_hold() -> None:
    signature = ALICE.sign(b"what was signed").signature
    record = _record(ALICE.verify_key.encode(), signature, b"what was sent")
    assert _verdicts(answer(record)) == [0]


def test_a_record_whose_length_runs_past_the_end_does_not_hold() -> None:
    message = b"a message cut short"
    whole = _signed(ALICE, message)
    # The length says 19 bytes; only 10 follow.
    assert _verdicts(answer(whole[:-9])) == [0]
    # A good record before it is still judged on its own.
    assert _verdicts(answer(_signed(BOB, b"fine") + whole[:-9])) == [1, 0]


def test_a_record_too_short_for_its_header_cannot_be_read() -> None:
    # The parent never frames such a record; the program gives up on it,
    # which ends the process.
    with pytest.raises(struct.error):
        answer(b"\x00" * 40)


def test_an_empty_request_is_answered_with_no_verdicts() -> None:
    assert answer(b"") == _LENGTH.pack(0)


def test_requests_are_answered_in_turn_until_the_end() -> None:
    first = _signed(ALICE, b"one") + _signed(ALICE, b"two", key=BOB)
    second = _signed(BOB, b"three")
    requests = io.BytesIO(_frame(first) + _frame(b"") + _frame(second))
    answers = io.BytesIO()
    serve(requests, answers)
    assert answers.getvalue() == (
        _LENGTH.pack(2) + b"\x01\x00" + _LENGTH.pack(0) + _LENGTH.pack(1) + b"\x01"
    )


def test_nothing_to_read_is_nothing_to_answer() -> None:
    answers = io.BytesIO()
    serve(io.BytesIO(b""), answers)
    assert answers.getvalue() == b""


@pytest.mark.parametrize("cut", [1, 3, 4 + 50])
def test_a_frame_cut_short_ends_the_program_after_the_whole_ones(cut: int) -> None:
    whole = _frame(_signed(ALICE, b"whole"))
    partial = _frame(_signed(BOB, b"partial"))[:cut]
    answers = io.BytesIO()
    serve(io.BytesIO(whole + partial), answers)
    assert answers.getvalue() == _LENGTH.pack(1) + b"\x01"
