"""The program of the signature-checking process (:mod:`ranvier.signature_process`).

It is run by its file path, never imported as part of ranvier, so that the
process loads nothing but libsodium as PyNaCl builds it (``nacl._sodium``,
without PyNaCl's Python bindings): some 12 MiB in all, where the server
takes 50 before it does anything.

It reads requests from stdin and answers each on stdout, in order:

* a request is a 4-byte big-endian length and that many bytes of records,
  each a 32-byte ed25519 public key, a 64-byte signature, a 4-byte length
  and the signed message;
* an answer is a 4-byte count and one byte per record, 1 where the
  signature holds and 0 where it does not (or the record is malformed).

It ends when stdin closes. Anything it cannot parse ends it too, which its
parent sees as a broken process and stops using.
"""

from __future__ import annotations

import struct
import sys
from typing import BinaryIO

from nacl._sodium import ffi, lib  # type: ignore[import-not-found]  # a C module without stubs

_LENGTH = struct.Struct("!I")
_KEY_BYTES = 32
_SIGNATURE_BYTES = 64
_HEADER_BYTES = _KEY_BYTES + _SIGNATURE_BYTES + _LENGTH.size


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def _verifies(key: bytes, signature: bytes, message: bytes) -> bool:
    # PyNaCl's build of libsodium exposes the combined form only (the
    # signature followed by the message), not crypto_sign_verify_detached.
    signed = signature + message
    opened = ffi.new("unsigned char[]", len(signed))
    opened_length = ffi.new("unsigned long long *")
    return bool(lib.crypto_sign_open(opened, opened_length, signed, len(signed), key) == 0)


def answer(records: bytes) -> bytes:
    """The answer to one request's records."""
    verdicts = bytearray()
    position = 0
    while position < len(records):
        key = records[position : position + _KEY_BYTES]
        signature = records[position + _KEY_BYTES : position + _KEY_BYTES + _SIGNATURE_BYTES]
        (size,) = _LENGTH.unpack_from(records, position + _KEY_BYTES + _SIGNATURE_BYTES)
        start = position + _HEADER_BYTES
        message = records[start : start + size]
        position = start + size
        well_formed = len(key) == _KEY_BYTES and len(signature) == _SIGNATURE_BYTES
        holds = well_formed and _verifies(key, signature, message)
        verdicts.append(1 if holds else 0)
    return _LENGTH.pack(len(verdicts)) + bytes(verdicts)


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """Answer requests until ``requests`` ends."""
    while (header := _read_exactly(requests, _LENGTH.size)) is not None:
        (size,) = _LENGTH.unpack(header)
        records = _read_exactly(requests, size)
        if records is None:
            return
        answers.write(answer(records))
        answers.flush()


if __name__ == "__main__":
    if lib.sodium_init() < 0:
        sys.exit("libsodium could not be initialised")
    serve(sys.stdin.buffer, sys.stdout.buffer)
