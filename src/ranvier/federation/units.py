"""Transactions and EDUs: what ``PUT /_matrix/federation/v1/send/{txnId}``
carries between homeservers, in either direction.

A :class:`Transaction` holds its PDUs as :class:`msgspec.Raw`, each exactly
the bytes of one event: a receiver hashes and checks the JSON that arrived,
and a sender embeds events exactly as stored, so neither side may re-shape
them. EDUs are ephemeral and unsigned, so they are plain values.

The spec caps a transaction at 50 PDUs and 100 EDUs; a transaction over
either cap is refused whether it is built here or decoded from the wire.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from ranvier.errors import BadJsonError

__all__ = [
    "MAX_EDUS_PER_TRANSACTION",
    "MAX_PDUS_PER_TRANSACTION",
    "Edu",
    "PduResult",
    "Transaction",
    "TransactionResponse",
    "decode_transaction",
    "encode_transaction",
    "parse_transaction_response",
]

MAX_PDUS_PER_TRANSACTION: Final = 50
MAX_EDUS_PER_TRANSACTION: Final = 100

_encoder: Final = msgspec.json.Encoder(order="sorted")


class Edu(msgspec.Struct, frozen=True, kw_only=True):
    """An ephemeral data unit: typing, receipts, presence, to-device messages."""

    edu_type: str
    content: dict[str, Any]


class Transaction(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The body of one ``/send`` request.

    The transaction ID is not part of it: it travels in the request path,
    and a transaction sent again is sent with the same ID.
    """

    origin: str
    #: When the sender started the transaction, in ms since the epoch.
    origin_server_ts: int
    pdus: tuple[msgspec.Raw, ...]
    #: The spec lets a transaction without EDUs leave the key out.
    edus: tuple[Edu, ...] = ()

    def __post_init__(self) -> None:
        if len(self.pdus) > MAX_PDUS_PER_TRANSACTION:
            raise BadJsonError(
                f"a transaction holds at most {MAX_PDUS_PER_TRANSACTION} PDUs, not {len(self.pdus)}"
            )
        if len(self.edus) > MAX_EDUS_PER_TRANSACTION:
            raise BadJsonError(
                f"a transaction holds at most {MAX_EDUS_PER_TRANSACTION} EDUs, not {len(self.edus)}"
            )

    def as_json_object(self) -> dict[str, Any]:
        """The transaction as plain JSON values, for a client that encodes
        its request bodies itself. PDUs are decoded from their bytes.
        """
        body: dict[str, Any] = {
            "origin": self.origin,
            "origin_server_ts": self.origin_server_ts,
            "pdus": [msgspec.json.decode(pdu) for pdu in self.pdus],
        }
        if self.edus:
            body["edus"] = [{"edu_type": edu.edu_type, "content": edu.content} for edu in self.edus]
        return body


class PduResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """How the receiver handled one PDU; no error means it was accepted."""

    error: str | None = None


class TransactionResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to ``/send``: a result for each PDU, keyed by event ID.

    The receiver answers 200 even when PDUs fail; the failures are here.
    """

    pdus: dict[str, PduResult]

    @property
    def errors(self) -> dict[str, str]:
        """The PDUs that failed, with what went wrong."""
        return {
            event_id: result.error
            for event_id, result in self.pdus.items()
            if result.error is not None
        }


def encode_transaction(transaction: Transaction) -> bytes:
    """The transaction as JSON with sorted keys, PDUs embedded byte for byte."""
    return _encoder.encode(transaction)


def decode_transaction(body: bytes) -> Transaction:
    """Parse a ``/send`` body; :class:`BadJsonError` says what is wrong with it.

    Only the transaction's shape is checked here. Each PDU is left as the
    bytes that arrived, for the receiver to check as an event.
    """
    try:
        transaction = msgspec.json.decode(body, type=Transaction)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise BadJsonError(f"invalid transaction: {exc}") from None
    for index, pdu in enumerate(transaction.pdus):
        if not bytes(pdu).lstrip().startswith(b"{"):
            raise BadJsonError(f"invalid transaction: PDU {index} is not a JSON object")
    return transaction


def parse_transaction_response(answer: Any) -> TransactionResponse:
    """Read a decoded ``/send`` answer; :class:`BadJsonError` if it is not
    shaped as the spec says.
    """
    try:
        return msgspec.convert(answer, TransactionResponse)
    except msgspec.ValidationError as exc:
        raise BadJsonError(f"invalid transaction response: {exc}") from None
