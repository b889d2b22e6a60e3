import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ranvier.errors import BadJsonError
from ranvier.protocol.canonical import decode_canonical_json, encode_canonical_json
from ranvier.protocol.events import Pdu
from ranvier.protocol.untrusted_json import (
    MAX_JSON_NESTING,
    JsonNestedTooDeeplyError,
    check_json_nesting,
    decode_untrusted_json,
    untrusted_json_decoder,
)


def _arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def _nesting(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_nesting(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_nesting(item) for item in value), default=0)
    return 0


# Strings full of what a naive count of brackets would miscount.
_TRICKY_TEXT = st.text(alphabet='[]{}"\\/:,ab\n\u00e9', max_size=8)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | _TRICKY_TEXT,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(_TRICKY_TEXT, children, max_size=3)
    ),
    max_leaves=40,
)


@given(_VALUES, st.integers(0, 12), st.sampled_from([None, 1]), st.booleans())
def test_the_limit_is_the_depth_of_arrays_and_objects_whatever_the_strings_hold(
    value: Any, limit: int, indent: int | None, ascii_only: bool
) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_only).encode()
    if _nesting(value) <= limit:
        check_json_nesting(text, limit=limit)
    else:
        with pytest.raises(JsonNestedTooDeeplyError):
            check_json_nesting(text, limit=limit)


def test_escaped_quotes_and_backslashes_do_not_end_strings_early() -> None:
    # One level of real nesting; the strings hold brackets that, were the
    # escapes misread, would count as fifty levels.
    text = b'["\\\\", "\\"' + b"[" * 50 + b'", "\\\\\\"]]]"]'
    assert json.loads(text) == ["\\", '"' + "[" * 50, '\\"]]]']
    check_json_nesting(text, limit=1)
    with pytest.raises(JsonNestedTooDeeplyError):
        check_json_nesting(b"[" + text + b"]", limit=1)


@pytest.mark.parametrize("shape", [_arrays, _objects])
def test_decoding_allows_the_limit_and_refuses_one_more(shape: Any) -> None:
    assert _nesting(decode_untrusted_json(shape(MAX_JSON_NESTING))) == MAX_JSON_NESTING
    with pytest.raises(msgspec.DecodeError, match="nested too deeply"):
        decode_untrusted_json(shape(MAX_JSON_NESTING + 1))


@pytest.mark.parametrize("depth", [1_000, 5_000, 32_000])
def test_json_too_deep_for_the_decoder_is_a_decode_error(depth: int) -> None:
    # msgspec itself raises RecursionError here, which callers do not expect.
    with pytest.raises(RecursionError):
        msgspec.json.decode(_arrays(depth))
    with pytest.raises(msgspec.DecodeError):
        decode_untrusted_json(_arrays(depth))
    with pytest.raises(msgspec.DecodeError):
        decode_untrusted_json(_arrays(depth).decode())
    # Even where the measure is skipped, the decoder's own limit is turned
    # into the same error.
    with pytest.raises(msgspec.DecodeError):
        decode_untrusted_json(_arrays(depth), check_nesting=False)


class _Shape(msgspec.Struct):
    a: msgspec.Raw
    b: int = 0


def test_typed_decoders_turn_deep_input_into_decode_errors() -> None:
    body = b'{"a":' + _arrays(5_000) + b',"b":1}'
    checked = untrusted_json_decoder(_Shape)
    unchecked = untrusted_json_decoder(_Shape, check_nesting=False)
    for decode in (checked, unchecked):
        with pytest.raises(msgspec.DecodeError):
            decode(body)
    # Within the decoder's reach, only the measured decoder refuses.
    body = b'{"a":' + _arrays(200) + b',"b":1}'
    with pytest.raises(JsonNestedTooDeeplyError):
        checked(body)
    assert bytes(unchecked(msgspec.Raw(body)).a) == _arrays(200)
    assert unchecked(memoryview(body)).b == 1


def test_canonical_decoding_refuses_deep_json_as_bad_json() -> None:
    with pytest.raises(BadJsonError, match="nested too deeply"):
        decode_canonical_json(_arrays(5_000))


def _deep(depth: int) -> Any:
    value: Any = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def _pdu(content: Any) -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "room_id": "!room:example.org",
        "sender": "@alice:example.org",
        "origin_server_ts": 1_700_000_000_000,
        "depth": 5,
        "prev_events": ["$prev"],
        "auth_events": ["$create"],
        "content": content,
        "hashes": {"sha256": "AAAA"},
        "signatures": {"example.org": {"ed25519:1": "SIG"}},
    }


@pytest.mark.parametrize("version", ["6", "11", "12"])
@pytest.mark.parametrize("depth", [MAX_JSON_NESTING - 1, 900, 5_000])
def test_a_pdu_nested_too_deeply_is_bad_json(version: str, depth: int) -> None:
    """Given as bytes or as a dict, the same PDU is refused the same way:
    its content at level two, the PDU nests one level deeper than it.
    """
    content = _deep(depth)
    raw = (
        b'{"content":'
        + b'{"a":' * depth
        + b"{}"
        + b"}" * depth
        + b","
        + json.dumps(
            {key: value for key, value in _pdu(None).items() if key != "content"}
        ).encode()[1:]
    )
    for given_as in (raw, raw.decode()):
        with pytest.raises(BadJsonError, match="nested too deeply"):
            Pdu.from_json(given_as, version)
    with pytest.raises(BadJsonError):
        Pdu.from_json(_pdu(content), version)


def test_a_pdu_within_the_limit_is_taken() -> None:
    content = _deep(MAX_JSON_NESTING - 2)
    pdu = Pdu.from_json(encode_canonical_json(_pdu(content)), "10")
    assert _nesting(pdu.json) == MAX_JSON_NESTING
    assert Pdu.from_json(_pdu(content), "10").event_id == pdu.event_id


@pytest.mark.parametrize(
    "body",
    [b'{"test": "a\x81"}', b'{"a\xff": 1}', b'{"b": "\xed\xa0\x80"}', b'{"c": "\xc3"}'],
)
def test_strings_that_are_not_utf8_are_decode_errors(body: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_untrusted_json(body)
    with pytest.raises(msgspec.DecodeError):
        decode_untrusted_json(body, check_nesting=False)
    with pytest.raises(msgspec.DecodeError):
        untrusted_json_decoder(dict[str, Any])(body)
