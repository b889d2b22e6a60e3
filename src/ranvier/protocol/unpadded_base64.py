"""Unpadded base64, the encoding Matrix uses for keys, signatures and hashes.

The spec writes base64 without ``=`` padding, in the standard alphabet
everywhere except event IDs of room version 4 onwards (and v12 room IDs),
which use the URL-safe alphabet. Decoders accept input with or without
padding, as the spec asks.
"""

from __future__ import annotations

import base64
import binascii

from ranvier.errors import BadJsonError

__all__ = ["decode_unpadded_base64", "encode_unpadded_base64"]


def encode_unpadded_base64(data: bytes, *, urlsafe: bool = False) -> str:
    encoded = base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)
    return encoded.rstrip(b"=").decode("ascii")


def decode_unpadded_base64(text: str, *, urlsafe: bool = False) -> bytes:
    """Decode base64 with or without padding; raise BadJsonError if invalid."""
    # b64decode maps the alternative alphabet onto the standard one before it
    # validates, so it would accept a mix of both; refuse the other alphabet.
    if any(char in text for char in ("+/" if urlsafe else "-_")):
        raise BadJsonError("invalid base64: character from the wrong alphabet")
    padded = text + "=" * (-len(text) % 4)
    alphabet = b"-_" if urlsafe else b"+/"
    try:
        return base64.b64decode(padded, altchars=alphabet, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadJsonError(f"invalid base64: {exc}") from None
