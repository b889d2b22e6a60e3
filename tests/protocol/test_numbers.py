"""Numbers written in text by others."""

from __future__ import annotations

import pytest

from ranvier.protocol.numbers import is_decimal_number


@pytest.mark.parametrize("text", ["0", "7", "0042", "9007199254740991", "1" * 40])
def test_ascii_digits_are_a_number(text: str) -> None:
    assert is_decimal_number(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "-1",
        "+1",
        " 1",
        "1 ",
        "1.0",
        "1e3",
        "0x10",
        "\u00b2",  # superscript two: str.isdigit says yes, int refuses it
        "1\u00b2",
        "\u0663",  # Arabic-Indic three: int reads it as 3
        "\uff11",  # fullwidth one
    ],
)
def test_anything_else_is_not(text: str) -> None:
    assert not is_decimal_number(text)
