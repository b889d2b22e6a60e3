"""Registration with a token (the spec's ``m.login.registration_token``
stage), and the admin's management of tokens.

A server that keeps registration closed to the public but hands out tokens
offers one flow of two stages: ``m.login.registration_token``, then the
``m.login.dummy`` every registration here ends with. The token stage takes
one use of the token for the registration's session; the dummy stage then
creates the account and completes that use in one write. A session that is
abandoned holds its use only until it expires (:data:`SESSION_LIFETIME_MS`),
then the use is free again.

A use taken stays the session's even if the admin lowers ``uses_allowed``
or moves ``expiry_time`` before the registration completes: the token was
valid when the use was granted. Deleting the token ends its sessions.
"""

from __future__ import annotations

import itertools
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

from ranvier.errors import MatrixError
from ranvier.storage.accounts import NewAccount, NewDevice
from ranvier.storage.registration_tokens import UNCHANGED, TokenRecord, TokenUse, Unchanged

__all__ = [
    "DUMMY",
    "MAX_TOKEN_LENGTH",
    "REGISTRATION_TOKEN",
    "SESSION_LIFETIME_MS",
    "TOKEN_FLOWS",
    "RegistrationTokenStore",
    "RegistrationTokens",
    "is_token_shaped",
    "token_json",
]

REGISTRATION_TOKEN: Final = "m.login.registration_token"
DUMMY: Final = "m.login.dummy"
TOKEN_FLOWS: Final = [{"stages": [REGISTRATION_TOKEN, DUMMY]}]

#: The spec's limit on a token's length.
MAX_TOKEN_LENGTH: Final = 64
#: How long a registration session holds the use it took: long enough to
#: fill in a form, short enough that an abandoned one soon frees the use.
SESSION_LIFETIME_MS: Final = 3_600_000

_TOKEN_ALPHABET: Final = string.ascii_letters + string.digits + "._~-"
_TOKEN_CHARACTERS: Final = frozenset(_TOKEN_ALPHABET)
_DEFAULT_LENGTH: Final = 16
# Random tokens drawn before giving up: only short lengths with most of
# their tokens taken ever need more than one.
_DRAWS: Final = 100
# Lengths with this few tokens in all are drawn from those still free, so
# a free one is found however many are taken (random draws could miss it).
_ENUMERATED_UP_TO: Final = len(_TOKEN_ALPHABET) ** 2


class RegistrationTokenStore(Protocol):
    """Tokens in storage (:class:`ranvier.storage.registration_tokens.RegistrationTokenStorage`)."""

    async def use_token(
        self, session_id: str, token: str, *, now_ts: int, expires_ts: int
    ) -> TokenUse: ...

    async def register_with_token(
        self, account: NewAccount, device: NewDevice | None, *, session_id: str, now_ts: int
    ) -> bool: ...

    async def session_token(self, session_id: str, now_ts: int) -> str | None: ...

    async def create_token(
        self, token: str, *, uses_allowed: int | None, expiry_time: int | None
    ) -> bool: ...

    async def update_token(
        self,
        token: str,
        *,
        uses_allowed: int | Unchanged | None = UNCHANGED,
        expiry_time: int | Unchanged | None = UNCHANGED,
    ) -> bool: ...

    async def delete_token(self, token: str) -> bool: ...

    async def get_token(self, token: str, now_ts: int) -> TokenRecord | None: ...

    async def list_tokens(self, now_ts: int) -> list[TokenRecord]: ...


def is_token_shaped(token: str) -> bool:
    """Whether ``token`` is 1 to 64 of the characters a token may hold."""
    return 0 < len(token) <= MAX_TOKEN_LENGTH and _TOKEN_CHARACTERS.issuperset(token)


def token_json(record: TokenRecord) -> dict[str, Any]:
    """A token as Synapse's admin API shows one."""
    return {
        "token": record.token,
        "uses_allowed": record.uses_allowed,
        "pending": record.pending,
        "completed": record.completed,
        "expiry_time": record.expiry_time,
    }


def _challenge(session: str, completed: list[str]) -> dict[str, Any]:
    return {"flows": TOKEN_FLOWS, "params": {}, "session": session, "completed": completed}


def _not_found(token: str) -> MatrixError:
    return MatrixError(
        f"No such registration token: {token}", errcode="M_NOT_FOUND", http_status=404
    )


def _invalid_param(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)


class RegistrationTokens:
    """The token stage of registration, and the tokens' management.

    ``clock_ms`` (wall-clock milliseconds) decides when tokens and sessions
    expire; tests replace it to move time on.
    """

    def __init__(
        self,
        store: RegistrationTokenStore,
        *,
        clock_ms: Callable[[], int] | None = None,
        session_lifetime_ms: int = SESSION_LIFETIME_MS,
    ) -> None:
        self._store = store
        self.clock_ms: Callable[[], int] = clock_ms if clock_ms is not None else _wall_clock_ms
        self._session_lifetime_ms = session_lifetime_ms

    # Registration.

    async def challenge(self, session: str) -> dict[str, Any]:
        """The 401 answer's body for ``session``: the flow and what of it is done."""
        held = await self._store.session_token(session, self.clock_ms())
        return _challenge(session, [] if held is None else [REGISTRATION_TOKEN])

    async def take_use(self, session: str | None, auth: Mapping[str, Any]) -> dict[str, Any]:
        """Take a use of the token ``auth`` gives for ``session``; the 401
        answer's body that asks for the next stage. Raises a 401 carrying the
        flows for a token unknown, expired or used up.
        """
        token = auth.get("token")
        if token is None:
            raise MatrixError(
                "the registration token is missing", errcode="M_MISSING_PARAM", http_status=400
            )
        if not isinstance(token, str):
            raise _invalid_param("the registration token must be a string")
        if session is None:
            raise MatrixError(
                "the registration token stage needs the session",
                errcode="M_MISSING_PARAM",
                http_status=400,
            )
        now = self.clock_ms()
        outcome: TokenUse = "invalid"
        if is_token_shaped(token):
            outcome = await self._store.use_token(
                session, token, now_ts=now, expires_ts=now + self._session_lifetime_ms
            )
        if outcome == "changed":
            raise _invalid_param("the registration token has changed within this session")
        if outcome == "finished":
            raise _invalid_param("this session has completed its registration")
        if outcome == "invalid":
            raise MatrixError(
                "invalid registration token",
                errcode="M_UNAUTHORIZED",
                http_status=401,
                **_challenge(session, []),
            )
        return _challenge(session, [REGISTRATION_TOKEN])

    async def check_use_held(self, session: str | None) -> str:
        """``session``, once it holds a use of a token; a 401 carrying the
        flows otherwise. Only advice: completing decides for real.
        """
        if session is not None and await self._store.session_token(session, self.clock_ms()):
            return session
        raise self._stage_missing(session)

    def completing(self, session: str) -> Callable[[NewAccount, NewDevice | None], Awaitable[None]]:
        """How :meth:`ranvier.core.accounts.Accounts.register` creates the
        account of ``session``: with the use it holds completed in the same
        write, or not at all (a 401 carrying the flows)."""

        async def create(account: NewAccount, device: NewDevice | None) -> None:
            done = await self._store.register_with_token(
                account, device, session_id=session, now_ts=self.clock_ms()
            )
            if not done:
                raise self._stage_missing(session)

        return create

    def _stage_missing(self, session: str | None) -> MatrixError:
        return MatrixError(
            f"complete {REGISTRATION_TOKEN} first: this session holds no use of a token"
            " (it may have expired)",
            errcode="M_UNAUTHORIZED",
            http_status=401,
            **_challenge(session if session is not None else secrets.token_urlsafe(16), []),
        )

    async def is_valid(self, token: str) -> bool:
        """Whether a registration could take a use of ``token`` now."""
        if not is_token_shaped(token):
            return False
        now = self.clock_ms()
        record = await self._store.get_token(token, now)
        return record is not None and record.is_valid(now)

    # Administration.

    async def list(self, valid: bool | None = None) -> list[TokenRecord]:
        """Every token, or those valid (``True``) or not (``False``) now."""
        now = self.clock_ms()
        records = await self._store.list_tokens(now)
        if valid is None:
            return records
        return [record for record in records if record.is_valid(now) == valid]

    async def get(self, token: str) -> TokenRecord:
        record = await self._store.get_token(token, self.clock_ms())
        if record is None:
            raise _not_found(token)
        return record

    async def create(
        self,
        token: str | None,
        *,
        length: int | None = None,
        uses_allowed: int | None = None,
        expiry_time: int | None = None,
    ) -> TokenRecord:
        """A new token: ``token`` itself, or ``length`` random characters
        (16 if neither is given). Raises ``M_INVALID_PARAM`` for a token of
        the wrong shape, one that exists, or values out of range.
        """
        self._check_uses_and_expiry(uses_allowed, expiry_time)
        if token is not None:
            if not is_token_shaped(token):
                raise _invalid_param(
                    f"a registration token is 1 to {MAX_TOKEN_LENGTH} of A-Z, a-z, 0-9 and . _ ~ -"
                )
            if not await self._store.create_token(
                token, uses_allowed=uses_allowed, expiry_time=expiry_time
            ):
                raise _invalid_param(f"Token already exists: {token}")
            return await self.get(token)
        size = _DEFAULT_LENGTH if length is None else length
        if not 0 < size <= MAX_TOKEN_LENGTH:
            raise _invalid_param(f"length must be from 1 to {MAX_TOKEN_LENGTH}")
        for _ in range(_DRAWS):
            drawn: str
            if len(_TOKEN_ALPHABET) ** size <= _ENUMERATED_UP_TO:
                free = await self._free_tokens(size)
                if not free:
                    break
                drawn = secrets.choice(free)
            else:
                drawn = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(size))
            if await self._store.create_token(
                drawn, uses_allowed=uses_allowed, expiry_time=expiry_time
            ):
                return await self.get(drawn)
            # Taken (likely only for short lengths): draw again.
        raise _invalid_param(f"no free token of length {size} was found: ask for a longer one")

    async def _free_tokens(self, size: int) -> tuple[str, ...]:
        taken = {record.token for record in await self._store.list_tokens(self.clock_ms())}
        every = (
            "".join(characters) for characters in itertools.product(_TOKEN_ALPHABET, repeat=size)
        )
        return tuple(token for token in every if token not in taken)

    async def update(
        self,
        token: str,
        *,
        uses_allowed: int | Unchanged | None = UNCHANGED,
        expiry_time: int | Unchanged | None = UNCHANGED,
    ) -> TokenRecord:
        """Change ``uses_allowed`` and ``expiry_time`` of ``token`` as given."""
        self._check_uses_and_expiry(
            None if uses_allowed == UNCHANGED else uses_allowed,
            None if expiry_time == UNCHANGED else expiry_time,
        )
        if not await self._store.update_token(
            token, uses_allowed=uses_allowed, expiry_time=expiry_time
        ):
            raise _not_found(token)
        return await self.get(token)

    async def delete(self, token: str) -> None:
        if not await self._store.delete_token(token):
            raise _not_found(token)

    def _check_uses_and_expiry(self, uses_allowed: int | None, expiry_time: int | None) -> None:
        if uses_allowed is not None and uses_allowed < 0:
            raise _invalid_param("uses_allowed must be a non-negative integer or null")
        if expiry_time is not None and expiry_time < self.clock_ms():
            raise _invalid_param("expiry_time must not be in the past")


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000
