import pytest

from ranvier.core.notifier import StreamPosition
from ranvier.core.pagination import (
    format_pagination_token,
    format_sync_token,
    parse_pagination_token,
    parse_sync_token,
)
from ranvier.errors import MatrixError


def test_tokens_round_trip() -> None:
    position = StreamPosition(123, 4, 9)
    assert parse_sync_token(format_sync_token(position)) == position
    # A token from before the account data stream starts that stream at 0.
    assert parse_sync_token("s123_4") == StreamPosition(123, 4, 0)
    # From before receipts and typing: those start at 0.
    assert parse_sync_token("s123_4_9") == StreamPosition(123, 4, 9, 0, 0)
    # From before presence: it starts at 0.
    assert parse_sync_token("s1_2_3_4_5") == StreamPosition(1, 2, 3, 4, 5, 0)
    # From before to-device messages and device lists: those start at 0.
    assert parse_sync_token("s1_2_3_4_5_6") == StreamPosition(1, 2, 3, 4, 5, 6, 0, 0)
    every = StreamPosition(1, 2, 3, 4, 5, 6, 7, 8)
    assert format_sync_token(every) == "s1_2_3_4_5_6_7_8"
    assert parse_sync_token("s1_2_3_4_5_6_7_8") == every
    assert parse_pagination_token(format_pagination_token(77)) == 77
    # A sync token is a pagination token too: its events position.
    assert parse_pagination_token(format_sync_token(position)) == 123
    # Backfilled events sit below zero.
    assert format_pagination_token(-1) == "t-1"
    assert parse_pagination_token(format_pagination_token(-(2**53))) == -(2**53)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "s",
        "s1",
        "s1_",
        "s_1",
        "s-1_0",
        "s1_2_3_4",
        "s1_2_",
        "s1_2_3_4_5_",
        "s1_2_3_4_5_6_7",
        "s1_2_3_4_5_6_7_",
        "s1_2_3_4_5_6_7_8_9",
        "t1",
        "x1_2",
        "s1_2 ",
        "s" + "9" * 19 + "_0",
    ],
)
def test_malformed_sync_tokens_are_refused(token: str) -> None:
    with pytest.raises(MatrixError) as raised:
        parse_sync_token(token)
    assert (raised.value.errcode, raised.value.http_status) == ("M_INVALID_PARAM", 400)


@pytest.mark.parametrize("token", ["", "t", "t-", "t--1", "t+1", "tt1", "t1.5", "1"])
def test_malformed_pagination_tokens_are_refused(token: str) -> None:
    with pytest.raises(MatrixError) as raised:
        parse_pagination_token(token)
    assert raised.value.errcode == "M_INVALID_PARAM"
