"""User-interactive authentication (client-server API, "User-Interactive
Authentication API"): the requests that ask a user to prove again who they
are (deleting devices, changing the password, deactivating, replacing
cross-signing keys, adding an e-mail address, asking for a login token),
and registration's sessions.

A request without ``auth`` is answered 401 with the flows offered to its
user and a new session, stored (:mod:`ranvier.storage.uia`) with whose it
is and for which operation. A user with a password is offered
``m.login.password``; one with an identity at a configured single sign-on
provider is offered ``m.login.sso``, done out of band through the fallback
page (:mod:`ranvier.api.sso`), after which the client sends the session
alone. Each flow is one stage.

Once the request a session was opened for has succeeded, its answer is kept
with the session: the spec has a completed stage never retried, and a retry
of a finished session answered "either a 401 response with the completed
stages, or the result of the API call". Here it is the result: the same
answer, the call not carried out again. A retry in that session of another
request (other devices, other keys) is refused, as is a session used for
another operation or by another user.

A registration's session is claimed in the write that makes the account,
or that makes a guest a full one
(:class:`ranvier.storage.accounts.RegistrationClaim`); a retry in it
registers nothing and answers the same user ID, with a new login (as
Synapse does: the client lost the first answer, and with it the first
access token, which nobody else ever saw).

Only sessions this server opened are kept: a session a client made up is
not known here, and is answered as a request without one (a password is
still proof enough), never as another's.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import msgspec

from ranvier.errors import MatrixError
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.storage.accounts import RegistrationClaim
from ranvier.storage.uia import NewUiaSession, UiaSession

__all__ = [
    "ADD_THREEPID",
    "CHANGE_PASSWORD",
    "CROSS_SIGNING",
    "DEACTIVATE",
    "DELETE_DEVICES",
    "LOGIN_TOKEN",
    "PASSWORD",
    "SESSION_LIFETIME_MS",
    "SSO",
    "AuthRequired",
    "Operation",
    "Ticket",
    "UiaAccounts",
    "UiaStore",
    "UserInteractiveAuth",
]

PASSWORD: Final = "m.login.password"
SSO: Final = "m.login.sso"

#: How long a session lasts: long enough to fill in a form or sign in at
#: an identity provider, and, for a finished one, to retry a request whose
#: answer was lost.
SESSION_LIFETIME_MS: Final = 3_600_000

_REGISTER: Final = "register"


@dataclass(frozen=True, slots=True)
class Operation:
    """A request that takes user-interactive authentication: ``name`` is
    stored with its sessions, ``description`` finishes the sentence "A
    client is trying to ..." on the single sign-on confirmation page."""

    name: str
    description: str


DELETE_DEVICES: Final = Operation("delete_devices", "remove devices from your account")
CHANGE_PASSWORD: Final = Operation("change_password", "change your account's password")
DEACTIVATE: Final = Operation("deactivate", "deactivate your account, for good")
CROSS_SIGNING: Final = Operation("cross_signing", "replace your cross-signing keys")
ADD_THREEPID: Final = Operation("add_threepid", "add an e-mail address to your account")
LOGIN_TOKEN: Final = Operation("login_token", "sign in on another device with your account")

_OPERATIONS: Final = {
    operation.name: operation
    for operation in (
        DELETE_DEVICES,
        CHANGE_PASSWORD,
        DEACTIVATE,
        CROSS_SIGNING,
        ADD_THREEPID,
        LOGIN_TOKEN,
    )
}


class AuthRequired(Exception):
    """User-interactive authentication must be (re)done: ``body`` is the
    401 answer's body.
    """

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body.get("error", "authentication required"))
        self.body = body


class UiaStore(Protocol):
    """Sessions in storage (:class:`ranvier.storage.uia.UiaStorage`)."""

    async def open_uia_session(self, session: NewUiaSession, *, now_ms: int) -> None: ...

    async def uia_session(self, session_id: str) -> UiaSession | None: ...

    async def complete_uia_stage(
        self, session_id: str, user_id: str, stage: str, *, now_ms: int
    ) -> bool: ...

    async def finish_uia_session(
        self, session_id: str, user_id: str, request_hash: bytes, result: str
    ) -> None: ...


class UiaAccounts(Protocol):
    """Passwords (:class:`ranvier.core.accounts.Accounts`)."""

    async def check_password(self, user_id: str, password: str) -> bool: ...

    async def has_password(self, user_id: str) -> bool: ...


@dataclass(slots=True)
class Ticket:
    """What authentication let through. With ``answer`` the session's
    request was carried out already: send that, do nothing more. Otherwise
    carry the request out, then tell :meth:`done` its answer."""

    answer: dict[str, Any] | None
    _store: UiaStore | None = field(default=None, repr=False)
    _session: UiaSession | None = None
    _request_hash: bytes = b""

    async def done(self, result: Mapping[str, Any]) -> None:
        """Keep ``result`` as the answer to a retry in this session."""
        if self._store is None or self._session is None or self._session.user_id is None:
            return
        await self._store.finish_uia_session(
            self._session.session_id,
            self._session.user_id,
            self._request_hash,
            msgspec.json.encode(result).decode(),
        )


def _request_hash(operation: Operation, request: Mapping[str, Any]) -> bytes:
    """What tells two requests of one operation apart: its parameters, but
    never a secret (a new password), which callers leave out."""
    return hashlib.sha256(
        encode_canonical_json({"operation": operation.name, "request": dict(request)})
    ).digest()


def _forbidden(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_FORBIDDEN", http_status=403)


def _identified_user(auth: Mapping[str, Any]) -> str | None:
    identifier = auth.get("identifier")
    if isinstance(identifier, Mapping) and isinstance(identifier.get("user"), str):
        return str(identifier["user"])
    user = auth.get("user")
    return user if isinstance(user, str) else None


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class UserInteractiveAuth:
    """The sessions and stages; see the module's doc.

    ``sso_links`` tells whether a user has an identity at a configured
    single sign-on provider (None: single sign-on is not configured).
    ``clock_ms`` (wall-clock milliseconds) decides when sessions expire;
    tests replace it.
    """

    def __init__(
        self,
        *,
        store: UiaStore,
        accounts: UiaAccounts,
        sso_links: Callable[[str], Awaitable[bool]] | None = None,
        clock_ms: Callable[[], int] | None = None,
        session_lifetime_ms: int = SESSION_LIFETIME_MS,
    ) -> None:
        self._store = store
        self._accounts = accounts
        self._sso_links = sso_links
        self.clock_ms: Callable[[], int] = clock_ms if clock_ms is not None else _wall_clock_ms
        self._lifetime_ms = session_lifetime_ms

    # A user's requests.

    async def run(
        self,
        user_id: str,
        token_hash: bytes | None,
        operation: Operation,
        auth: object,
        *,
        request: Mapping[str, Any],
        perform: Callable[[], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """Carry ``perform`` out once ``auth`` proves ``user_id``; raises
        :class:`AuthRequired` until it does. A retry of a finished session
        gets the first answer, ``perform`` not called again."""
        ticket = await self.check(user_id, token_hash, operation, auth, request=request)
        if ticket.answer is not None:
            return ticket.answer
        result = await perform()
        await ticket.done(result)
        return result

    async def check(
        self,
        user_id: str,
        token_hash: bytes | None,
        operation: Operation,
        auth: object,
        *,
        request: Mapping[str, Any],
    ) -> Ticket:
        """Let the request through once ``auth`` proves ``user_id``, or
        answer a finished session's retry; raise :class:`AuthRequired`
        until then. ``request`` is what tells this request from another of
        the same operation, secrets left out; ``token_hash`` is the access
        token's, kept with a new session."""
        if auth is None:
            raise AuthRequired(await self._challenge(user_id, token_hash, operation, None))
        if not isinstance(auth, Mapping):
            raise MatrixError("'auth' must be an object", errcode="M_BAD_JSON", http_status=400)
        request_hash = _request_hash(operation, request)
        session_id = auth.get("session")
        record = None
        if isinstance(session_id, str) and session_id:
            record = await self._store.uia_session(session_id)
        if record is not None and record.user_id != user_id:
            # Another user's session is not this user's to know of: it is
            # answered as one never opened.
            record = None
        if record is not None:
            if record.operation != operation.name:
                raise _forbidden(
                    f"the session {session_id!r} is another request's: leave it out to start"
                    " a new one"
                )
            if record.result is not None:
                if record.request_hash != request_hash:
                    raise _forbidden(
                        "this session's request was carried out already; another request"
                        " needs a session of its own"
                    )
                return Ticket(msgspec.json.decode(record.result))
            if record.expires_ts <= self.clock_ms():
                record = None
        passed = Ticket(None, self._store, record, request_hash)
        flows = await self._flows(user_id)
        completed = record.completed if record is not None else ()
        stage = auth.get("type")
        if stage is None:
            if record is not None and any(set(flow) <= set(completed) for flow in flows):
                return passed
            raise AuthRequired(await self._challenge(user_id, token_hash, operation, record))
        if stage == SSO:
            if record is not None and SSO in completed:
                return passed
            body = await self._challenge(user_id, token_hash, operation, record)
            body["errcode"] = "M_UNAUTHORIZED"
            body["error"] = (
                f"{SSO} is done in a browser, at /_matrix/client/v3/auth/{SSO}/fallback/web"
                "?session=<session>; then send the session alone"
            )
            raise AuthRequired(body)
        if stage != PASSWORD:
            offered = " or ".join(stage for flow in flows for stage in flow)
            raise MatrixError(
                f"unknown authentication type {stage!r} (this server offers {offered})",
                errcode="M_UNRECOGNIZED",
                http_status=400,
            )
        password = auth.get("password")
        if not isinstance(password, str):
            raise MatrixError("'password' must be a string", errcode="M_BAD_JSON", http_status=400)
        who = _identified_user(auth)
        localpart = user_id[1:].partition(":")[0]
        if who is not None and who.lower() not in (user_id.lower(), localpart.lower()):
            # Another user's credentials can never authorise this request,
            # however often they are retried: refused outright, not asked again.
            raise _forbidden(f"the authentication names {who}, not the requesting user {user_id}")
        if not await self._accounts.check_password(user_id, password):
            body = await self._challenge(user_id, token_hash, operation, record)
            body["errcode"] = "M_FORBIDDEN"
            body["error"] = "invalid password"
            raise AuthRequired(body)
        return passed

    async def answer_after_logout(
        self,
        access_token_hash: bytes,
        operation: Operation,
        auth: object,
        request: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        """The answer of a finished session of ``operation`` that the access
        token, now logged out by that very request (deactivation), opened;
        None when there is none. The retry's token is known nowhere else."""
        if not isinstance(auth, Mapping):
            return None
        session_id = auth.get("session")
        if not isinstance(session_id, str) or not session_id:
            return None
        record = await self._store.uia_session(session_id)
        if (
            record is None
            or record.operation != operation.name
            or record.result is None
            or record.token_hash is None
            or not secrets.compare_digest(record.token_hash, access_token_hash)
            or record.request_hash != _request_hash(operation, request)
        ):
            return None
        answer: dict[str, Any] = msgspec.json.decode(record.result)
        return answer

    async def _flows(self, user_id: str) -> list[list[str]]:
        flows: list[list[str]] = []
        if await self._accounts.has_password(user_id):
            flows.append([PASSWORD])
        if self._sso_links is not None and await self._sso_links(user_id):
            flows.append([SSO])
        # A user with neither is still asked for a password, which fails:
        # the spec has no way to say "nothing will do".
        return flows or [[PASSWORD]]

    async def _challenge(
        self,
        user_id: str,
        token_hash: bytes | None,
        operation: Operation,
        record: UiaSession | None,
    ) -> dict[str, Any]:
        """The 401 answer's body: in ``record``, or in a session opened now."""
        flows = await self._flows(user_id)
        if record is None:
            session_id = secrets.token_urlsafe(24)
            now = self.clock_ms()
            await self._store.open_uia_session(
                NewUiaSession(
                    session_id=session_id,
                    operation=operation.name,
                    user_id=user_id,
                    token_hash=token_hash,
                    expires_ts=now + self._lifetime_ms,
                ),
                now_ms=now,
            )
            completed: Sequence[str] = ()
        else:
            session_id, completed = record.session_id, record.completed
        return {
            "flows": [{"stages": flow} for flow in flows],
            "params": {},
            "session": session_id,
            "completed": list(completed),
        }

    # Single sign-on's fallback (ranvier.api.sso, ranvier.core.sso).

    async def open_session(self, session_id: str) -> tuple[str, str] | None:
        """The user of an open session of a user's request and what the
        request would do (:attr:`Operation.description`); None when there
        is no such session, or it expired or finished."""
        record = await self._store.uia_session(session_id)
        if (
            record is None
            or record.user_id is None
            or record.result is not None
            or record.expires_ts <= self.clock_ms()
            or record.operation not in _OPERATIONS
        ):
            return None
        return record.user_id, _OPERATIONS[record.operation].description

    async def complete_sso(self, session_id: str, user_id: str) -> bool:
        """Record single sign-on done by ``user_id`` in their open session;
        False when it is not (or no longer) open."""
        found = await self.open_session(session_id)
        if found is None or found[0] != user_id:
            return False
        return await self._store.complete_uia_stage(
            session_id, user_id, SSO, now_ms=self.clock_ms()
        )

    # Registration.

    async def open_registration(self, session_id: str | None) -> str:
        """The session of a registration's 401 answer: ``session_id`` while
        it is an open registration session, else a new one."""
        if session_id is not None and await self._open_registration(session_id) is not None:
            return session_id
        new = secrets.token_urlsafe(24)
        now = self.clock_ms()
        await self._store.open_uia_session(
            NewUiaSession(
                session_id=new,
                operation=_REGISTER,
                user_id=None,
                token_hash=None,
                expires_ts=now + self._lifetime_ms,
            ),
            now_ms=now,
        )
        return new

    async def registered_in(self, session_id: str) -> str | None:
        """The user a registration in ``session_id`` made, while a retry in
        it is still answered."""
        record = await self._store.uia_session(session_id)
        if (
            record is None
            or record.operation != _REGISTER
            or record.user_id is None
            or record.expires_ts <= self.clock_ms()
        ):
            return None
        return record.user_id

    async def registration_claim(self, session_id: str | None) -> RegistrationClaim | None:
        """What a registration in ``session_id`` claims with its account;
        None for a session this server did not open, or that expired."""
        if session_id is None or await self._open_registration(session_id) is None:
            return None
        return RegistrationClaim(
            session_id=session_id,
            write_id=secrets.token_hex(8),
            expires_ts=self.clock_ms() + self._lifetime_ms,
        )

    async def _open_registration(self, session_id: str) -> UiaSession | None:
        record = await self._store.uia_session(session_id)
        if (
            record is None
            or record.operation != _REGISTER
            or record.user_id is not None
            or record.expires_ts <= self.clock_ms()
        ):
            return None
        return record
