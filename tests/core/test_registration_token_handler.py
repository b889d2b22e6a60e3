"""The registration token handler over real storage: the shape a token must
have, random tokens when most of a length are taken, and the clock deciding
validity."""

from __future__ import annotations

import string

import pytest

from ranvier.core.registration_tokens import RegistrationTokens, is_token_shaped
from ranvier.errors import MatrixError
from ranvier.storage import Storage

_ALPHABET = string.ascii_letters + string.digits + "._~-"


@pytest.mark.parametrize(
    ("token", "shaped"),
    [
        ("a", True),
        (_ALPHABET[2:], True),
        (_ALPHABET, False),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        ("a b", False),
        ("é", False),
        ("a/b", False),
    ],
)
def test_the_shape_of_a_token(token: str, shaped: bool) -> None:
    assert is_token_shaped(token) is shaped


async def test_random_tokens_give_up_when_every_one_of_a_length_is_taken(
    storage: Storage,
) -> None:
    tokens = RegistrationTokens(storage.registration_tokens, clock_ms=lambda: 0)
    for character in _ALPHABET[1:]:
        await tokens.create(character)
    # One left: found however unlikely a random draw of it is.
    made = await tokens.create(None, length=1)
    assert made.token == _ALPHABET[0]
    with pytest.raises(MatrixError) as refused:
        await tokens.create(None, length=1)
    assert (refused.value.errcode, refused.value.http_status) == ("M_INVALID_PARAM", 400)
    assert len(await tokens.list()) == len(_ALPHABET)


async def test_validity_follows_the_clock(storage: Storage) -> None:
    now = [1000]
    tokens = RegistrationTokens(storage.registration_tokens, clock_ms=lambda: now[0])
    await tokens.create("soon", expiry_time=2000)
    assert await tokens.is_valid("soon")
    assert [record.token for record in await tokens.list(valid=True)] == ["soon"]
    now[0] = 2000
    assert not await tokens.is_valid("soon")
    assert [record.token for record in await tokens.list(valid=False)] == ["soon"]
    with pytest.raises(MatrixError):
        await tokens.update("soon", expiry_time=1999)
