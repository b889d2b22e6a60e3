"""Transactions and EDUs on the wire: the spec's limits (from the spec
vectors), PDUs kept byte for byte, and the shapes refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ranvier.errors import BadJsonError
from ranvier.federation.units import (
    MAX_EDUS_PER_TRANSACTION,
    MAX_PDUS_PER_TRANSACTION,
    Edu,
    PduResult,
    Transaction,
    TransactionResponse,
    decode_transaction,
    encode_transaction,
    parse_transaction_response,
)

VECTORS = Path(__file__).parent.parent / "data" / "spec-vectors"


def _limits() -> dict[str, Any]:
    data = json.loads((VECTORS / "identifiers-and-limits.json").read_text())
    limits: dict[str, Any] = data["transaction_limits"]
    return limits


def _body(pdus: int = 0, edus: int = 0, **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "origin": "a.example",
        "origin_server_ts": 1_700_000_000_000,
        "pdus": [{"n": n} for n in range(pdus)],
        **extra,
    }
    if edus:
        body["edus"] = [{"edu_type": "m.typing", "content": {"n": n}} for n in range(edus)]
    return json.dumps(body).encode()


def test_the_limits_are_the_specs() -> None:
    limits = _limits()
    assert limits["max_pdus"] == MAX_PDUS_PER_TRANSACTION
    assert limits["max_edus"] == MAX_EDUS_PER_TRANSACTION


def test_a_transaction_at_the_limits_is_accepted_and_one_past_either_refused() -> None:
    limits = _limits()
    full = decode_transaction(_body(limits["max_pdus"], limits["max_edus"]))
    assert (len(full.pdus), len(full.edus)) == (limits["max_pdus"], limits["max_edus"])
    with pytest.raises(BadJsonError, match=f"at most {limits['max_pdus']} PDUs, not 51"):
        decode_transaction(_body(limits["max_pdus"] + 1))
    with pytest.raises(BadJsonError, match=f"at most {limits['max_edus']} EDUs, not 101"):
        decode_transaction(_body(1, limits["max_edus"] + 1))
    # Built here, the same limits hold.
    with pytest.raises(BadJsonError, match="at most 50 PDUs"):
        Transaction(origin="a", origin_server_ts=1, pdus=(msgspec.Raw(b"{}"),) * 51)
    with pytest.raises(BadJsonError, match="at most 100 EDUs"):
        Transaction(
            origin="a",
            origin_server_ts=1,
            pdus=(),
            edus=(Edu(edu_type="m.typing", content={}),) * 101,
        )


def test_pdus_are_kept_byte_for_byte() -> None:
    # Not canonical: spaces, key order, an escaped character. A receiver
    # must see exactly these bytes.
    pdus = [b'{"type": "m.room.message", "a": 1}', b'{ "content": {"body": "caf\\u00e9"} }']
    body = (
        b'{"pdus": ['
        + b", ".join(pdus)
        + b'], "origin": "a.example", "origin_server_ts": 5, "unknown": true}'
    )
    transaction = decode_transaction(body)
    assert [bytes(pdu) for pdu in transaction.pdus] == pdus
    encoded = encode_transaction(transaction)
    for pdu in pdus:
        assert pdu in encoded
    assert decode_transaction(encoded) == transaction


def test_encoding_sorts_keys_and_leaves_out_empty_edus() -> None:
    plain = Transaction(origin="a.example", origin_server_ts=5, pdus=(msgspec.Raw(b'{"x":1}'),))
    assert encode_transaction(plain) == (
        b'{"origin":"a.example","origin_server_ts":5,"pdus":[{"x":1}]}'
    )
    with_edu = Transaction(
        origin="a.example",
        origin_server_ts=5,
        pdus=(),
        edus=(Edu(edu_type="m.typing", content={"b": 1, "a": 2}),),
    )
    assert encode_transaction(with_edu) == (
        b'{"edus":[{"content":{"a":2,"b":1},"edu_type":"m.typing"}],'
        b'"origin":"a.example","origin_server_ts":5,"pdus":[]}'
    )


def test_as_json_object_decodes_the_pdus_for_a_client_that_encodes() -> None:
    transaction = Transaction(
        origin="a.example",
        origin_server_ts=5,
        pdus=(msgspec.Raw(b'{"type": "m.room.message", "depth": 3}'),),
        edus=(Edu(edu_type="m.receipt", content={"!r:a": {}}),),
    )
    assert transaction.as_json_object() == {
        "origin": "a.example",
        "origin_server_ts": 5,
        "pdus": [{"type": "m.room.message", "depth": 3}],
        "edus": [{"edu_type": "m.receipt", "content": {"!r:a": {}}}],
    }
    assert "edus" not in Transaction(origin="a", origin_server_ts=1, pdus=()).as_json_object()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "invalid transaction"),
        (b"[]", "Expected `object`"),
        (b'{"origin_server_ts": 1, "pdus": []}', "missing required field `origin`"),
        (b'{"origin": "a", "pdus": []}', "missing required field `origin_server_ts`"),
        (b'{"origin": "a", "origin_server_ts": 1}', "missing required field `pdus`"),
        (b'{"origin": "a", "origin_server_ts": "1", "pdus": []}', "origin_server_ts"),
        (b'{"origin": "a", "origin_server_ts": 1, "pdus": {}}', "`$.pdus`"),
        (b'{"origin": "a", "origin_server_ts": 1, "pdus": [1]}', "PDU 0 is not a JSON object"),
        (
            b'{"origin": "a", "origin_server_ts": 1, "pdus": [], "edus": [{"content": {}}]}',
            "missing required field `edu_type`",
        ),
        (
            b'{"origin": "a", "origin_server_ts": 1, "pdus": [],'
            b' "edus": [{"edu_type": "m.typing", "content": []}]}',
            "`$.edus[0].content`",
        ),
    ],
)
def test_malformed_transactions_are_refused_saying_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(BadJsonError, match=message.replace("$", r"\$").replace("[", r"\[")) as bad:
        decode_transaction(body)
    assert bad.value.errcode == "M_BAD_JSON"


def test_transaction_responses() -> None:
    refusal = {"error": "You are not allowed to send a message to this room."}
    answer = {"pdus": {"$ok:a.example": {}, "$bad:a.example": refusal}, "extra": 1}
    response = parse_transaction_response(answer)
    assert response.pdus["$ok:a.example"] == PduResult()
    assert response.errors == {
        "$bad:a.example": "You are not allowed to send a message to this room."
    }
    # Encoded for the receiving side's answer, a success is an empty object.
    assert msgspec.json.decode(msgspec.json.encode(response)) == {
        "pdus": {"$ok:a.example": {}, "$bad:a.example": refusal}
    }
    assert parse_transaction_response({"pdus": {}}) == TransactionResponse(pdus={})
    malformed: list[Any] = [{}, {"pdus": []}, {"pdus": {"$e": {"error": 5}}}, None]
    for bad in malformed:
        with pytest.raises(BadJsonError, match="invalid transaction response"):
            parse_transaction_response(bad)
