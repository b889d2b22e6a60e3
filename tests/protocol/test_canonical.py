import datetime
import enum
import json
import math
from pathlib import Path
from typing import Any

import canonicaljson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ranvier.errors import BadJsonError
from ranvier.protocol.canonical import (
    CANONICAL_INT_MAX,
    CANONICAL_INT_MIN,
    decode_canonical_json,
    encode_canonical_json,
)

DATA = Path(__file__).parent.parent / "data"
SPEC = json.loads((DATA / "spec-vectors" / "canonical-json.json").read_text("utf-8"))
PEER = json.loads(
    (DATA / "peer-vectors" / "gomatrixserverlib-canonical-json.json").read_text("utf-8")
)


def _integral_float_to_int(text: str) -> int | float:
    # The spec's last example writes 1e10 and expects 10000000000: an
    # integral number in exponent form is the integer it denotes.
    value = float(text)
    return int(value) if value.is_integer() else value


def _parse_spec_text(text: str) -> Any:
    return json.loads(text, parse_float=_integral_float_to_int)


@pytest.mark.parametrize("case", SPEC["cases"], ids=[c["name"] for c in SPEC["cases"]])
def test_spec_examples(case: dict[str, str]) -> None:
    encoded = encode_canonical_json(_parse_spec_text(case["input_text"]))
    assert encoded == case["expected_output"].encode("utf-8")
    assert encoded.hex() == case["expected_output_utf8_hex"]


PEER_CASES = PEER["compact_cases"] + PEER["conversion_cases"]


@pytest.mark.parametrize("case", PEER_CASES, ids=[c["input_text"] for c in PEER_CASES])
def test_peer_compact_and_conversion(case: dict[str, str]) -> None:
    # -0 appears here as an encoding case; Python's parser turns it into 0.
    encoded = encode_canonical_json(json.loads(case["input_text"]))
    assert encoded == case["expected_output"].encode("utf-8")


@pytest.mark.parametrize("text", PEER["strict_validity_v6_plus"]["valid"])
def test_strict_valid_texts_decode(text: str) -> None:
    assert decode_canonical_json(text.encode("utf-8")) == json.loads(text)
    assert decode_canonical_json(text) == json.loads(text)


@pytest.mark.parametrize("text", PEER["strict_validity_v6_plus"]["invalid"])
def test_strict_invalid_texts_refused(text: str) -> None:
    with pytest.raises(BadJsonError) as info:
        decode_canonical_json(text.encode("utf-8"))
    assert info.value.errcode == "M_BAD_JSON"
    assert "at byte" in info.value.message


def test_range_boundaries() -> None:
    assert encode_canonical_json([CANONICAL_INT_MAX, CANONICAL_INT_MIN]) == (
        b"[9007199254740991,-9007199254740991]"
    )
    assert decode_canonical_json(b"[9007199254740991,-9007199254740991]") == [
        CANONICAL_INT_MAX,
        CANONICAL_INT_MIN,
    ]
    for bad in (CANONICAL_INT_MAX + 1, CANONICAL_INT_MIN - 1, 2**64, -(2**70)):
        with pytest.raises(BadJsonError, match=rf"integer {bad} at \$\[1\] is outside"):
            encode_canonical_json([0, bad])


# --- encoding refusals: what is wrong and where ---------------------------


class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    pass


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": [1, {"b": 1.5}]}, r"floats are not allowed .*at \$\.a\[1\]\.b: 1\.5"),
        ({"a": 1.0}, r"floats are not allowed .*at \$\.a: 1\.0"),
        # msgspec would write these three as null.
        ({"n": math.nan}, r"floats .*\$\.n: nan"),
        ({"n": math.inf}, r"floats .*\$\.n: inf"),
        ({"n": -math.inf}, r"floats .*\$\.n: -inf"),
        ({"a": {1: "x"}}, r"object key 1 at \$\.a is not a string"),
        ({"a": {None: "x"}}, r"object key None at \$\.a is not a string"),
        ({"a": ["ok", "\udc00"]}, r"string at \$\.a\[1\] holds a lone surrogate U\+DC00"),
        ({"k\ud800": 1}, r"key 'k\\ud800' at \$ holds a lone surrogate U\+D800 at index 1"),
        ({"a": 2**53}, r"integer 9007199254740992 at \$\.a is outside"),
        ({"a": Colour.RED}, r"a Colour cannot be encoded .*\(at \$\.a\)"),
        ({"a": Name("x")}, r"a Name cannot be encoded .*\(at \$\.a\)"),
        ({"d": datetime.date(2024, 1, 1)}, r"a date cannot be encoded .*\(at \$\.d\)"),
        ({"s": {1, 2}}, r"a set cannot be encoded .*\(at \$\.s\)"),
        ({"b": b"bytes"}, r"a bytes cannot be encoded .*\(at \$\.b\)"),
        (1.5, r"floats .*at \$: 1\.5"),
    ],
)
def test_encode_refuses(value: Any, message: str) -> None:
    with pytest.raises(BadJsonError, match=message) as info:
        encode_canonical_json(value)
    assert info.value.errcode == "M_BAD_JSON"


def test_encode_reports_the_first_problem_even_after_valid_values() -> None:
    value = {"a": "fine", "b": [1, 2, {"c": True, "d": None, "e": 2.5}]}
    with pytest.raises(BadJsonError, match=r"\$\.b\[2\]\.e"):
        encode_canonical_json(value)


def test_encode_refuses_too_deep_nesting() -> None:
    value: Any = []
    for _ in range(100_000):
        value = [value]
    with pytest.raises(BadJsonError, match="nested too deeply"):
        encode_canonical_json(value)


def test_encode_scalars_and_tuples() -> None:
    assert encode_canonical_json("x") == b'"x"'
    assert encode_canonical_json(5) == b"5"
    assert encode_canonical_json(None) == b"null"
    assert encode_canonical_json(True) == b"true"
    assert encode_canonical_json((1, "a", [])) == b'[1,"a",[]]'


def test_encode_escapes_and_literals() -> None:
    # Only the control characters are escaped; '/', DEL, U+2028 and
    # characters outside the BMP are written as they are.
    value = {"s": '\x00\x1f"\\/\x7f\u2028\U0001f408'}
    expected = '{"s":"\\u0000\\u001f\\"\\\\/\x7f\u2028\U0001f408"}'.encode()
    assert encode_canonical_json(value) == expected


def test_encode_does_not_change_its_input() -> None:
    value = {"b": {"d": 1, "c": 2}, "a": [3, 2, 1]}
    encode_canonical_json(value)
    assert list(value) == ["b", "a"]
    assert list(value["b"]) == ["d", "c"]


# --- decoding refusals -------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"a":-0}', r"^-0 at byte 5 is not allowed"),
        (b'{"a": [1, -0]}', r"^-0 at byte 10 is not allowed"),
        (b"-0", r"^-0 at byte 0 is not allowed"),
        (b'{"a":9007199254740992}', r"integer 9007199254740992 at byte 5 is outside"),
        (b'{"a":-9007199254740992}', r"integer -9007199254740992 at byte 5 is outside"),
        (b"[" + b"9" * 5000 + b"]", r"integer 9{20}\.\.\. at byte 1 is outside"),
        (b'{"b":"1.5","a":1.5}', r"number 1\.5 at byte 15 has a fraction or exponent"),
        (b'{"a":1e5}', r"number 1e5 at byte 5 has a fraction or exponent"),
        (b'{"a":1E+5}', r"number 1E\+5 at byte 5 has a fraction or exponent"),
        (b'{"a":-0.0}', r"number -0\.0 at byte 5 has a fraction or exponent"),
        # Whitespace may come between a number and what it follows.
        (b"[ \n -0 ]", r"^-0 at byte 4 is not allowed"),
        (b'{"a" :\t-0}', r"^-0 at byte 7 is not allowed"),
        (b" -0", r"^-0 at byte 1 is not allowed"),
        (b'{"a":[1,\r\n9007199254740992]}', r"integer 9007199254740992 at byte 10 is outside"),
        (b'{"a":"$x-0y","b":[-0]}', r"^-0 at byte 18 is not allowed"),
        (b'{"x":"ok","y":"\xc3"}', r"invalid UTF-8 at byte 15"),
        (b'{"x":"\xff"}', r"invalid UTF-8 at byte 6"),
        (b'["\\ud800"]', r"string at \$\[0\] holds a lone surrogate U\+D800"),
        (b'{"\\udc00": 1}', r"key '\\udc00' at \$ holds a lone surrogate U\+DC00"),
        (b"[NaN]", r"invalid JSON: .*byte 1"),
        (b"[Infinity]", r"invalid JSON"),
        (b"[1,", r"invalid JSON"),
        (b'{"a":1} x', r"invalid JSON: .*trailing"),
        (b"", r"invalid JSON"),
    ],
)
def test_decode_refuses(data: bytes, message: str) -> None:
    with pytest.raises(BadJsonError, match=message) as info:
        decode_canonical_json(data)
    assert info.value.errcode == "M_BAD_JSON"


def test_decode_refuses_str_with_lone_surrogate() -> None:
    with pytest.raises(BadJsonError, match="lone surrogate at index 7"):
        decode_canonical_json('{"a": "\ud800"}')


@pytest.mark.parametrize(
    "data",
    [
        # Digits and "-0" inside strings are not numbers.
        b'{"a":"-0 and 99999999999999999999 \\" -0 "}',
        b'{"date":"2024-05-01","n":-5}',
        b'{"a":"\\\\","b":12}',
        b'{"ts":1721563200123,"big":9007199254740991,"neg":-9007199254740991}',
        b'{"k":"' + b"x" * 100_000 + b' -0"}',
        # URL-safe base64 event IDs hold "-0" and digit runs.
        b'{"auth_events":["$Ab-0cd","$1234567890123456789"],"depth":7}',
    ],
)
def test_decode_accepts_lookalikes(data: bytes) -> None:
    assert decode_canonical_json(data) == json.loads(data)


def test_decode_does_not_need_sorted_keys_or_compact_text() -> None:
    assert decode_canonical_json(b'{ "b" : 1 ,\n "a" : [ true , null ] }') == {
        "a": [True, None],
        "b": 1,
    }


# --- properties ---------------------------------------------------------------

_keys = st.text()
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=CANONICAL_INT_MIN, max_value=CANONICAL_INT_MAX)
    | st.text(),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(_keys, children, max_size=6),
    max_leaves=40,
)


@settings(max_examples=300)
@given(_json_values)
def test_matches_canonicaljson(value: Any) -> None:
    assert encode_canonical_json(value) == canonicaljson.encode_canonical_json(value)


@settings(max_examples=300)
@given(_json_values)
def test_decode_encode_is_stable(value: Any) -> None:
    encoded = encode_canonical_json(value)
    decoded = decode_canonical_json(encoded)
    assert decoded == value
    assert encode_canonical_json(decoded) == encoded


@settings(max_examples=200)
@given(
    _json_values,
    st.one_of(
        st.floats(),
        st.integers(min_value=CANONICAL_INT_MAX + 1),
        st.integers(max_value=CANONICAL_INT_MIN - 1),
    ),
)
def test_a_bad_number_anywhere_is_refused(value: Any, bad: float) -> None:
    with pytest.raises(BadJsonError, match=r"\$\.x\[0\]"):
        encode_canonical_json({"x": [bad], "v": value})
