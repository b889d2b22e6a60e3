"""Single sign-on through OpenID Connect providers (``m.login.sso``).

A client sends the browser to ``/login/sso/redirect[/{idpId}]``; we send
it on to the provider's authorization endpoint (authorization code flow,
PKCE S256, ``state`` and ``nonce``); the provider sends it back to our
callback with a code; we exchange the code at the token endpoint, check
the ID token, map its subject to a local user (creating it the first
time) and hand the browser a login token for the client's ``redirectUrl``.

The same providers confirm who a user is for user-interactive
authentication's ``m.login.sso`` stage (:mod:`ranvier.core.uia`): the
fallback page starts a session that names the authentication session it
confirms and the browser it was started in (a cookie); the callback checks
the provider's answer as for a login, and then completes the stage only for
a subject already linked to that session's own user, in that browser. It
never makes a user, and never issues a login token.

The claims a new user is made from (localpart, display name) are the ID
token's, or the provider's userinfo endpoint's when the provider's
``user_profile_method`` asks for them or the ID token lacks what is needed
(:meth:`SsoProviders._profile_claims`). An existing user's profile is
never changed by a later login.

Invariants
----------

* **Nothing is made before the ID token is checked.** Its signature
  (against the provider's JWKS), ``iss``, ``aud``, ``exp`` and the
  session's ``nonce`` are all checked first; a failure creates no user, no
  mapping and no login token. Userinfo claims are taken only for the ID
  token's own ``sub`` (OpenID Connect Core 5.3.2), and only without an ID
  token at all are they the sole word on who logs in: then they came over
  the verified connection with the access token the code was exchanged for.
* **A session is used once, before it expires.** Sessions are stored in
  the database (:mod:`ranvier.storage.sso`), so the callback may reach any
  process, the one that served the redirect or another; it takes the
  session named by ``state`` in one write that deletes it, and an unknown,
  used or expired one is refused. ``state``, the nonce and the PKCE
  verifier are never logged.
* **A subject is one user, for good** (:mod:`ranvier.storage.sso`). A new
  subject whose localpart is taken is refused unless the provider's
  ``allow_existing_users`` links it to that account.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import httpx
import msgspec

from ranvier.config import OidcProviderConfig
from ranvier.core.accounts import Accounts
from ranvier.core.login_tokens import LoginTokens
from ranvier.core.profiles import MAX_DISPLAYNAME_LENGTH
from ranvier.errors import MatrixError
from ranvier.http_transport import DirectTransport
from ranvier.outbound_http import capped_body
from ranvier.storage.accounts import NewAccount, NewDevice, UserInUseError
from ranvier.storage.sso import SsoSession

if TYPE_CHECKING:
    # PyJWT, with the cryptography it loads, is imported where an ID token
    # is checked: some 9 MiB that a server without single sign-on never needs.
    import jwt

__all__ = [
    "BROWSER_COOKIE",
    "CALLBACK_PATH",
    "MAX_RESPONSE_BYTES",
    "SESSION_LIFETIME_SECONDS",
    "SsoConfirmed",
    "SsoError",
    "SsoLogin",
    "SsoMappingStore",
    "SsoProviders",
    "browser_hash",
    "sanitise_localpart",
]

#: Where providers send the browser back; not a spec path, so outside ``/_matrix``.
CALLBACK_PATH: Final = "/_ranvier/client/oidc/callback"

#: The cookie that ties a confirmation's callback to the browser that
#: started it: another browser sent to the provider with its ``state``
#: (by whoever started it) cannot complete it.
BROWSER_COOKIE: Final = "ranvier_sso_confirm"

#: How long a user has at the provider before the session is forgotten.
SESSION_LIFETIME_SECONDS: Final = 600.0

#: Unexpired sessions at once; past this, new logins wait for old ones to expire.
_MAX_SESSIONS: Final = 10_000

_HTTP_TIMEOUT_SECONDS: Final = 10.0

#: The largest answer read from a provider (discovery, keys, tokens, userinfo).
MAX_RESPONSE_BYTES: Final = 1024 * 1024

#: Asymmetric algorithms only: a symmetric one would let the client secret sign.
_ID_TOKEN_ALGORITHMS: Final = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")

_LOCALPART_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-/+")


class SsoError(Exception):
    """A login that cannot go on: shown to the user as a page, with nothing made."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class SsoMappingStore(Protocol):
    """:class:`ranvier.storage.sso.SsoStorage`."""

    async def sso_user(self, idp_id: str, subject: str) -> str | None: ...

    async def create_sso_account(self, account: NewAccount, idp_id: str, subject: str) -> str: ...

    async def link_sso_user(self, idp_id: str, subject: str, user_id: str, now_ts: int) -> str: ...

    async def create_sso_session(
        self, state_hash: bytes, session: SsoSession, *, now_ms: int, max_sessions: int
    ) -> bool: ...

    async def take_sso_session(
        self, state_hash: bytes, *, now_ms: int
    ) -> SsoSession | Literal["expired"] | None: ...

    async def sso_links(self, user_id: str) -> list[str]: ...


class SsoConfirmations(Protocol):
    """The authentication sessions single sign-on confirms
    (:class:`ranvier.core.uia.UserInteractiveAuth`)."""

    async def open_session(self, session_id: str) -> tuple[str, str] | None: ...

    async def complete_sso(self, session_id: str, user_id: str) -> bool: ...


def sanitise_localpart(claim: str) -> str:
    """A localpart from a username claim: lower-cased, and each character
    outside the localpart grammar written ``=xx`` (its UTF-8 bytes in hex),
    so that two different claims never give the same localpart."""
    out: list[str] = []
    for char in claim.lower():
        if char in _LOCALPART_CHARS:
            out.append(char)
        else:
            out.extend(f"={byte:02x}" for byte in char.encode("utf-8"))
    return "".join(out)


@dataclass(frozen=True, slots=True)
class SsoLogin:
    """A finished login: who, and the client URL carrying the login token."""

    user_id: str
    client_url: str
    #: The client's host, for the confirmation page.
    client_host: str


@dataclass(frozen=True, slots=True)
class SsoConfirmed:
    """A confirmation finished: ``user_id`` completed the single sign-on
    stage of their authentication session."""

    user_id: str


@dataclass(frozen=True, slots=True)
class _Discovery:
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    #: None when the provider names none, or none over https.
    userinfo_endpoint: str | None


def check_client_redirect(redirect_url: str) -> str:
    """The client's host, for an http(s) ``redirectUrl``; 400 ``M_INVALID_PARAM`` otherwise."""
    parsed = urllib.parse.urlsplit(redirect_url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise MatrixError(
            "redirectUrl must be an http:// or https:// URL with a host",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    return parsed.hostname


def _with_login_token(redirect_url: str, token: str) -> str:
    parsed = urllib.parse.urlsplit(redirect_url)
    query = urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)
    query = [(key, value) for key, value in query if key != "loginToken"]
    query.append(("loginToken", token))
    return urllib.parse.urlunsplit(parsed._replace(query=urllib.parse.urlencode(query)))


class _Provider:
    """One provider: its settings, its discovery document and keys, fetched on first use."""

    def __init__(self, config: OidcProviderConfig) -> None:
        self.config = config
        self._discovery: _Discovery | None = None
        self._jwks: jwt.PyJWKSet | None = None
        self._ssl: ssl.SSLContext | None = None

    def http(self) -> httpx.AsyncClient:
        if self._ssl is None:
            cafile = None if self.config.ca_file is None else str(self.config.ca_file)
            self._ssl = ssl.create_default_context(cafile=cafile)
        return httpx.AsyncClient(
            transport=DirectTransport(ssl_context=self._ssl),
            timeout=_HTTP_TIMEOUT_SECONDS,
            follow_redirects=False,
            trust_env=False,
        )

    async def _get_json(self, client: httpx.AsyncClient, url: str, what: str) -> dict[str, Any]:
        return await _request_json(client, "GET", url, what)

    async def discovery(self, client: httpx.AsyncClient) -> _Discovery:
        if self._discovery is None:
            url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
            document = await self._get_json(client, url, "discovery document")
            if document.get("issuer") != self.config.issuer:
                raise SsoError(
                    "the identity provider's discovery document names another issuer", status=502
                )
            endpoints = {}
            for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                value = document.get(key)
                if not isinstance(value, str) or not value.startswith("https://"):
                    raise SsoError(
                        f"the identity provider's discovery document has no https {key}", status=502
                    )
                endpoints[key] = value
            userinfo = document.get("userinfo_endpoint")
            self._discovery = _Discovery(
                **endpoints,
                userinfo_endpoint=(
                    userinfo
                    if isinstance(userinfo, str) and userinfo.startswith("https://")
                    else None
                ),
            )
        return self._discovery

    async def signing_key(self, client: httpx.AsyncClient, id_token: str) -> jwt.PyJWK:
        """The JWKS key the token names, fetching the set again once for a
        key not seen yet (the provider rotated its keys)."""
        import jwt

        try:
            kid = jwt.get_unverified_header(id_token).get("kid")
        except jwt.PyJWTError as exc:
            raise SsoError(f"the ID token is not a JWT: {exc}", status=502) from None
        for fresh in (False, True):
            if self._jwks is None or fresh:
                discovery = await self.discovery(client)
                document = await self._get_json(client, discovery.jwks_uri, "keys (JWKS)")
                try:
                    self._jwks = jwt.PyJWKSet.from_dict(document)
                except jwt.PyJWTError as exc:
                    raise SsoError(
                        f"the identity provider's keys cannot be read: {exc}", status=502
                    ) from None
            keys = [key for key in self._jwks.keys if kid is None or key.key_id == kid]
            if len(keys) == 1 or (kid is None and keys):
                return keys[0]
        raise SsoError(
            "the ID token is signed with a key the identity provider does not publish", status=502
        )


async def _request_json(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    what: str,
    *,
    headers: Mapping[str, str] | None = None,
    data: Mapping[str, str] | None = None,
    auth: httpx.Auth | None = None,
) -> dict[str, Any]:
    """A provider's JSON object answer, read no further than
    :data:`MAX_RESPONSE_BYTES`: a provider that answers without end must not
    fill our memory. Any failure is an :class:`SsoError` naming ``what``."""
    try:
        async with client.stream(
            method,
            url,
            headers={"Accept": "application/json", **(headers or {})},
            data=data,
            auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
        ) as response:
            if response.status_code != 200:
                raise SsoError(
                    f"the identity provider answered {response.status_code} for its {what}",
                    status=502,
                )
            content_type = response.headers.get("content-type", "")
            if content_type.split(";")[0].strip().lower() == "application/jwt":
                raise SsoError(
                    f"the identity provider answered its {what} as a JWT, which is not"
                    " supported: configure it to answer JSON",
                    status=502,
                )
            body = await _capped_body(response, what)
    except httpx.HTTPError as exc:
        raise SsoError(
            f"the identity provider's {what} could not be fetched: {exc}", status=502
        ) from None
    try:
        answer = msgspec.json.decode(body)
    except msgspec.DecodeError:
        answer = None
    if not isinstance(answer, dict):
        raise SsoError(f"the identity provider's {what} is not a JSON object", status=502)
    return answer


async def _capped_body(response: httpx.Response, what: str) -> bytes:
    too_large = SsoError(
        f"the identity provider's {what} is larger than {MAX_RESPONSE_BYTES} bytes", status=502
    )
    body = await capped_body(response, MAX_RESPONSE_BYTES)
    if body is None:
        raise too_large
    return body


def _display_name(claims: Mapping[str, Any], claim: str) -> str | None:
    """A new user's display name from ``claim``; None, never a refusal,
    for one that is missing, not a string, blank or too long for a profile."""
    value = claims.get(claim)
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > MAX_DISPLAYNAME_LENGTH:
        return None
    return value


def _state_hash(state: str) -> bytes:
    return hashlib.sha256(state.encode("utf-8")).digest()


def browser_hash(cookie: str) -> bytes:
    """What a confirmation's session keeps of its browser's cookie."""
    return hashlib.sha256(cookie.encode("utf-8")).digest()


def _same_browser(session: SsoSession, cookie: str | None) -> bool:
    return (
        session.browser_hash is not None
        and cookie is not None
        and secrets.compare_digest(browser_hash(cookie), session.browser_hash)
    )


def _pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class SsoProviders:
    """The configured providers, the sessions between redirect and
    callback, and the mapping of subjects to users.

    ``clock_ms`` (the wall clock, for account creation times) may be replaced by tests.
    """

    def __init__(
        self,
        providers: Sequence[OidcProviderConfig],
        *,
        client_base_url: str,
        accounts: Accounts,
        store: SsoMappingStore,
        login_tokens: LoginTokens,
    ) -> None:
        self._providers = {config.idp_id: _Provider(config) for config in providers}
        self._callback_url = client_base_url.rstrip("/") + CALLBACK_PATH
        self._accounts = accounts
        self._store = store
        #: The tokens a finished login hands the client, which ``/login`` takes.
        self.login_tokens = login_tokens
        #: How long a user has at the provider (tests shorten it).
        self.session_lifetime_seconds = SESSION_LIFETIME_SECONDS
        #: The authentication sessions a sign-on may confirm; None: none.
        self.confirmations: SsoConfirmations | None = None
        self.clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000

    @property
    def identity_providers(self) -> list[dict[str, str]]:
        """``identity_providers`` of the ``m.login.sso`` flow."""
        return [
            {"id": provider.config.idp_id, "name": provider.config.idp_name}
            for provider in self._providers.values()
        ]

    @property
    def callback_url(self) -> str:
        return self._callback_url

    def _provider(self, idp_id: str | None) -> _Provider:
        if idp_id is None:
            if len(self._providers) != 1:
                raise MatrixError(
                    "this server has several identity providers: name one in the path",
                    errcode="M_NOT_FOUND",
                    http_status=404,
                )
            return next(iter(self._providers.values()))
        provider = self._providers.get(idp_id)
        if provider is None:
            raise MatrixError(
                f"no identity provider {idp_id!r} here", errcode="M_NOT_FOUND", http_status=404
            )
        return provider

    async def start(self, idp_id: str | None, redirect_url: str) -> str:
        """Open a session and answer the provider's authorization URL to
        send the browser to. Raises MatrixError for a bad ``redirectUrl``,
        an unknown provider, or a provider that cannot be reached."""
        check_client_redirect(redirect_url)
        return await self._authorization_url(self._provider(idp_id), redirect_url=redirect_url)

    async def linked_providers(self, user_id: str) -> list[tuple[str, str]]:
        """The configured providers ``user_id`` has an identity at: each
        one's ID and name."""
        return [
            (idp_id, self._providers[idp_id].config.idp_name)
            for idp_id in await self._store.sso_links(user_id)
            if idp_id in self._providers
        ]

    async def has_link(self, user_id: str) -> bool:
        """Whether ``user_id`` can confirm who they are through a configured provider."""
        return bool(await self.linked_providers(user_id))

    async def start_confirmation(self, idp_id: str, uia_session: str, browser_hash: bytes) -> str:
        """Open a session confirming the authentication session
        ``uia_session`` for the browser whose cookie hashes to
        ``browser_hash``; answer the provider's authorization URL."""
        return await self._authorization_url(
            self._provider(idp_id), uia_session=uia_session, browser_hash=browser_hash
        )

    async def _authorization_url(
        self,
        provider: _Provider,
        *,
        redirect_url: str = "",
        uia_session: str | None = None,
        browser_hash: bytes | None = None,
    ) -> str:
        try:
            async with provider.http() as client:
                discovery = await provider.discovery(client)
        except SsoError as exc:
            raise MatrixError(exc.message, errcode="M_UNKNOWN", http_status=502) from None
        now_ms = self.clock_ms()
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)
        session = SsoSession(
            idp_id=provider.config.idp_id,
            nonce=nonce,
            code_verifier=verifier,
            redirect_url=redirect_url,
            expires_ts=now_ms + round(self.session_lifetime_seconds * 1000),
            uia_session=uia_session,
            browser_hash=browser_hash,
        )
        if not await self._store.create_sso_session(
            _state_hash(state), session, now_ms=now_ms, max_sessions=_MAX_SESSIONS
        ):
            raise MatrixError(
                "too many logins under way; try again in a few minutes",
                errcode="M_LIMIT_EXCEEDED",
                http_status=429,
            )
        query = urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": provider.config.client_id,
                "redirect_uri": self._callback_url,
                "scope": " ".join(provider.config.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": _pkce_challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        separator = "&" if "?" in discovery.authorization_endpoint else "?"
        return discovery.authorization_endpoint + separator + query

    async def finish(
        self, params: Mapping[str, str], *, browser_cookie: str | None = None
    ) -> SsoLogin | SsoConfirmed:
        """Handle the provider's callback: check everything, then map the
        subject and issue a login token, or, for a confirmation, complete
        its stage. ``browser_cookie`` is the :data:`BROWSER_COOKIE` the
        browser sent. Raises :class:`SsoError` with nothing made."""
        state = params.get("state")
        taken = (
            await self._store.take_sso_session(_state_hash(state), now_ms=self.clock_ms())
            if state
            else None
        )
        if taken is None:
            raise SsoError(
                "this login is unknown or was already used: start again from your client"
            )
        if taken == "expired":
            raise SsoError("this login took too long and has expired: start again from your client")
        session = taken
        if session.uia_session is not None and not _same_browser(session, browser_cookie):
            raise SsoError(
                "this confirmation was started in another browser: start it again from"
                " your client, in this browser",
                status=403,
            )
        error = params.get("error")
        if error is not None:
            description = params.get("error_description", "")
            raise SsoError(
                f"the identity provider refused the login: {error} {description}".strip(),
                status=403,
            )
        code = params.get("code")
        if not code:
            raise SsoError("the identity provider sent no authorization code")
        provider = self._providers[session.idp_id]
        async with provider.http() as client:
            tokens = await self._exchange_code(provider, client, session, code)
            subject, linked, claims = await self._profile_claims(provider, client, session, tokens)
        if session.uia_session is not None:
            return await self._confirm(session.uia_session, linked)
        if linked is None:
            user_id = await self._new_user(provider.config, subject, claims)
        else:
            user_id = linked
        token = await self.login_tokens.issue(user_id)
        return SsoLogin(
            user_id,
            _with_login_token(session.redirect_url, token),
            check_client_redirect(session.redirect_url),
        )

    async def _confirm(self, uia_session: str, linked: str | None) -> SsoConfirmed:
        """Complete the single sign-on stage of ``uia_session`` for the user
        the provider's subject is linked to, which must be the session's."""
        confirmations = self.confirmations
        found = None if confirmations is None else await confirmations.open_session(uia_session)
        if confirmations is None or found is None:
            raise SsoError(
                "the request this sign-in was to confirm has expired or was carried out"
                " already: start again from your client"
            )
        user_id = found[0]
        if linked != user_id:
            # Whoever signed in at the provider is not the user whose
            # request this is: their sign-in proves nothing of that user.
            raise SsoError(
                f"you signed in at the identity provider as another user than {user_id},"
                " whose request this confirms: sign in there as that user",
                status=403,
            )
        if not await confirmations.complete_sso(uia_session, user_id):
            raise SsoError(
                "the request this sign-in was to confirm has expired or was carried out"
                " already: start again from your client"
            )
        return SsoConfirmed(user_id)

    async def _profile_claims(
        self,
        provider: _Provider,
        client: httpx.AsyncClient,
        session: SsoSession,
        tokens: Mapping[str, Any],
    ) -> tuple[str, str | None, dict[str, Any]]:
        """The subject, the user it is linked to (None: a new subject), and
        the claims a new user is made from.

        Userinfo is asked only when it is wanted ("userinfo_endpoint"), or
        when without it the login would fail: no ID token, or a new
        subject's ID token without ``localpart_claim``. A provider that
        keeps profile claims out of its ID tokens then still works, and one
        that puts them in costs no second request. Its claims win over the
        ID token's, which fill in the rest.
        """
        config = provider.config
        id_token = tokens.get("id_token")
        if id_token is None:
            claims = await self._userinfo(provider, client, tokens, subject=None)
            subject: str = claims["sub"]
            return subject, await self._store.sso_user(config.idp_id, subject), claims
        if not isinstance(id_token, str):
            raise SsoError("the identity provider's ID token is not a string", status=502)
        claims = await self._id_token_claims(provider, client, session, id_token)
        subject = claims["sub"]
        linked = await self._store.sso_user(config.idp_id, subject)
        localpart = claims.get(config.localpart_claim)
        if config.user_profile_method == "userinfo_endpoint" or (
            linked is None and (not isinstance(localpart, str) or not localpart)
        ):
            claims |= await self._userinfo(provider, client, tokens, subject=subject)
        return subject, linked, claims

    async def _userinfo(
        self,
        provider: _Provider,
        client: httpx.AsyncClient,
        tokens: Mapping[str, Any],
        *,
        subject: str | None,
    ) -> dict[str, Any]:
        """The userinfo endpoint's claims, which must be ``subject``'s when
        there is an ID token to name one."""
        discovery = await provider.discovery(client)
        if discovery.userinfo_endpoint is None:
            raise SsoError(
                "the identity provider's discovery document has no https userinfo_endpoint"
                " to ask for the user's profile",
                status=502,
            )
        access_token = tokens.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise SsoError("the identity provider's token answer has no access token", status=502)
        claims = await _request_json(
            client,
            "GET",
            discovery.userinfo_endpoint,
            "userinfo",
            headers={"Authorization": f"Bearer {access_token}"},
        )
        found = claims.get("sub")
        if not isinstance(found, str) or not found:
            raise SsoError("the identity provider's userinfo has no subject", status=502)
        if subject is not None and found != subject:
            raise SsoError(
                "the identity provider's userinfo is for another subject than its ID token",
                status=502,
            )
        return claims

    async def _exchange_code(
        self, provider: _Provider, client: httpx.AsyncClient, session: SsoSession, code: str
    ) -> dict[str, Any]:
        """The token endpoint's answer for ``code``."""
        config = provider.config
        discovery = await provider.discovery(client)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self._callback_url,
            "code_verifier": session.code_verifier,
        }
        auth: httpx.BasicAuth | None = None
        if config.client_auth_method == "client_secret_post":
            form |= {"client_id": config.client_id, "client_secret": config.client_secret}
        else:
            # RFC 6749 2.3.1: each part form-encoded before Basic.
            auth = httpx.BasicAuth(
                urllib.parse.quote_plus(config.client_id),
                urllib.parse.quote_plus(config.client_secret),
            )
        return await _request_json(
            client, "POST", discovery.token_endpoint, "token endpoint", data=form, auth=auth
        )

    async def _id_token_claims(
        self, provider: _Provider, client: httpx.AsyncClient, session: SsoSession, id_token: str
    ) -> dict[str, Any]:
        import jwt

        config = provider.config
        key = await provider.signing_key(client, id_token)
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key=key,
                algorithms=list(_ID_TOKEN_ALGORITHMS),
                audience=config.client_id,
                issuer=config.issuer,
                options={"require": ["iss", "aud", "exp", "iat", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise SsoError(f"the ID token is not valid: {exc}", status=502) from None
        if not secrets.compare_digest(str(claims.get("nonce", "")), session.nonce):
            raise SsoError("the ID token's nonce is not this login's", status=502)
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise SsoError("the ID token has no subject", status=502)
        return claims

    async def _new_user(
        self, config: OidcProviderConfig, subject: str, claims: Mapping[str, Any]
    ) -> str:
        """The user a subject seen for the first time logs in as: made from
        the claims, or an existing one it is allowed to take."""
        claim = claims.get(config.localpart_claim)
        if not isinstance(claim, str) or not claim:
            raise SsoError(
                f"the identity provider gave no {config.localpart_claim!r} to name a new user by",
                status=502,
            )
        localpart = sanitise_localpart(claim)
        try:
            user_id = self._accounts.user_id_for(localpart)
        except MatrixError as exc:
            raise SsoError(f"no user can be made from {claim!r}: {exc}", status=403) from None
        made: list[str] = []

        async def create(account: NewAccount, device: NewDevice | None) -> None:
            made.append(await self._store.create_sso_account(account, config.idp_id, subject))

        try:
            await self._accounts.register(
                localpart,
                None,
                login=False,
                create=create,
                display_name=_display_name(claims, config.displayname_claim),
            )
        except UserInUseError:
            if not config.allow_existing_users:
                raise SsoError(
                    f"the user {user_id} exists already and is not linked to this"
                    " identity provider account; ask the server's administrator",
                    status=403,
                ) from None
            return await self._store.link_sso_user(config.idp_id, subject, user_id, self.clock_ms())
        return made[0]
