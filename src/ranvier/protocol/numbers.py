"""Reading numbers written in text by others: query parameters, headers,
attributes of fetched pages.

``str.isdigit`` is true of digits that ``int`` refuses (superscripts such
as ``"²"``) and ``int`` takes digits of every script (``"٣"`` is 3), so
neither alone says whether a text is a number as HTTP and Matrix write
them. A check that lets such a text through turns bad input into a 500,
or into a number its sender never wrote.
"""

from __future__ import annotations

__all__ = ["is_decimal_number"]


def is_decimal_number(text: str) -> bool:
    """Whether ``text`` is one or more of the ASCII digits 0-9 and nothing else."""
    return text.isascii() and text.isdigit()
