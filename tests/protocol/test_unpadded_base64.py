import base64
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ranvier.errors import BadJsonError
from ranvier.protocol.unpadded_base64 import decode_unpadded_base64, encode_unpadded_base64

VECTORS = json.loads(
    (Path(__file__).parent.parent / "data" / "spec-vectors" / "unpadded-base64.json").read_text(
        "utf-8"
    )
)


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[c["expected"] for c in VECTORS["cases"]])
def test_spec_examples(case: dict[str, str]) -> None:
    raw = case["input_utf8"].encode("utf-8")
    assert encode_unpadded_base64(raw) == case["expected"]
    assert decode_unpadded_base64(case["expected"]) == raw


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[c["expected"] for c in VECTORS["cases"]])
def test_decoding_accepts_padding(case: dict[str, str]) -> None:
    padded = case["expected"] + "=" * (-len(case["expected"]) % 4)
    assert decode_unpadded_base64(padded) == case["input_utf8"].encode("utf-8")


def test_url_safe_alphabet() -> None:
    # 0xfb 0xff encodes to characters 62 and 63 of the alphabet.
    data = b"\xfb\xff\xbf"
    assert encode_unpadded_base64(data) == "+/+/"
    assert encode_unpadded_base64(data, urlsafe=True) == "-_-_"
    changes = VECTORS["url_safe_alphabet_changes"]
    assert (changes["62"], changes["63"]) == ("-", "_")
    assert decode_unpadded_base64("-_-_", urlsafe=True) == data


@pytest.mark.parametrize(
    ("text", "urlsafe"),
    [
        ("-_-_", False),  # URL-safe characters in a standard field
        ("Zm9v!", False),
        ("Z", False),  # one character cannot hold a whole byte
        ("Zm 9v", False),
        ("+/+/", True),  # standard characters in a URL-safe field
    ],
)
def test_invalid_input_is_refused(text: str, urlsafe: bool) -> None:
    with pytest.raises(BadJsonError, match="invalid base64") as info:
        decode_unpadded_base64(text, urlsafe=urlsafe)
    assert info.value.errcode == "M_BAD_JSON"


@given(st.binary(), st.booleans())
def test_round_trip_and_no_padding(data: bytes, urlsafe: bool) -> None:
    text = encode_unpadded_base64(data, urlsafe=urlsafe)
    assert "=" not in text
    assert decode_unpadded_base64(text, urlsafe=urlsafe) == data
    expected = base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)
    assert text == expected.decode("ascii").rstrip("=")
