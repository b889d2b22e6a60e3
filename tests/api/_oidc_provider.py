"""An OpenID Connect provider over HTTPS on loopback, standing in for the
remote identity provider single sign-on talks to: discovery, an
authorization endpoint that approves at once, a token endpoint that checks
the client, the code and its PKCE verifier, the JWKS, and a userinfo
endpoint that checks the access token.

What it puts in the ID token and the userinfo answer is the test's to
change, so that each check of the homeserver can be made to fail on its own.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from ranvier.testing.network import Pki, serve, whole_body
from ranvier.web import Receive, Scope, Send, only_http

__all__ = ["FakeOidcProvider"]

CLIENT_ID = "ranvier-client"
CLIENT_SECRET = "s3cret/with+odd chars"


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class _Grant:
    nonce: str
    challenge: str
    redirect_uri: str


@dataclass
class FakeOidcProvider:
    """The provider; :meth:`start` serves it and sets :attr:`issuer`.

    ``subject`` and ``username`` are the user logging in. ``claims`` are
    put over the ID token's claims (None removes one), ``sign_with`` signs
    it with another key than the published one, ``deny`` makes the
    authorization endpoint answer with that error, ``send_id_token`` False
    leaves the ID token out of the token answer.

    The userinfo answer is ``sub`` and ``preferred_username`` with
    ``userinfo_claims`` put over them the same way; ``userinfo`` replaces
    the whole answer with ``(status, content type, body)``, and
    ``userinfo_enabled`` False answers 404 there.
    """

    subject: str = "subject-1"
    username: str = "alice"
    claims: dict[str, Any] = field(default_factory=dict)
    sign_with: rsa.RSAPrivateKey | None = None
    deny: str | None = None
    send_id_token: bool = True
    userinfo_claims: dict[str, Any] = field(default_factory=dict)
    userinfo: tuple[int, str, bytes] | None = None
    userinfo_enabled: bool = True
    issuer: str = ""
    #: Token requests that passed the client, code and PKCE checks.
    tokens_issued: int = 0
    #: Userinfo requests that carried an access token this provider issued.
    userinfo_requests: int = 0
    _key: rsa.RSAPrivateKey = field(default_factory=_new_key)
    _grants: dict[str, _Grant] = field(default_factory=dict)
    _access_tokens: set[str] = field(default_factory=set)

    async def start(self, nursery: Any, pki: Pki) -> str:
        port = await serve(nursery, self, pki.server_context("127.0.0.1"))
        self.issuer = f"https://127.0.0.1:{port}"
        return self.issuer

    def _id_token(self, grant: _Grant) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": self.subject,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": grant.nonce,
            "preferred_username": self.username,
        }
        for name, value in self.claims.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        key = self.sign_with if self.sign_with is not None else self._key
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "key-1"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await only_http(scope, receive, send):
            return
        body = await whole_body(receive)
        headers = {name.decode().lower(): value.decode() for name, value in scope["headers"]}
        query = dict(urllib.parse.parse_qsl(scope["query_string"].decode()))
        status, answer, extra = self._answer(scope["path"], query, headers, body)
        if isinstance(answer, bytes):
            payload = answer
        else:
            payload = msgspec.json.encode(answer) if answer is not None else b""
        if not any(name == b"content-type" for name, _ in extra):
            extra = [(b"content-type", b"application/json"), *extra]
        response_headers = extra
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})

    def _answer(
        self, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, list[tuple[bytes, bytes]]]:
        if path == "/.well-known/openid-configuration":
            return (
                200,
                {
                    "issuer": self.issuer,
                    "authorization_endpoint": f"{self.issuer}/authorize",
                    "token_endpoint": f"{self.issuer}/token",
                    "jwks_uri": f"{self.issuer}/jwks",
                    "userinfo_endpoint": f"{self.issuer}/userinfo",
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                },
                [],
            )
        if path == "/jwks":
            jwk = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
            return 200, {"keys": [{**jwk, "kid": "key-1", "use": "sig", "alg": "RS256"}]}, []
        if path == "/authorize":
            return self._authorize(query)
        if path == "/token":
            return self._token(headers, dict(urllib.parse.parse_qsl(body.decode())))
        if path == "/userinfo" and self.userinfo_enabled:
            return self._userinfo(headers)
        return 404, {"error": "not_found"}, []

    def _userinfo(self, headers: dict[str, str]) -> tuple[int, Any, list[tuple[bytes, bytes]]]:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme != "Bearer" or token not in self._access_tokens:
            return 401, {"error": "invalid_token"}, []
        self.userinfo_requests += 1
        if self.userinfo is not None:
            status, content_type, raw = self.userinfo
            return status, raw, [(b"content-type", content_type.encode())]
        claims: dict[str, Any] = {"sub": self.subject, "preferred_username": self.username}
        for name, value in self.userinfo_claims.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return 200, claims, []

    def _authorize(self, query: dict[str, str]) -> tuple[int, Any, list[tuple[bytes, bytes]]]:
        if query.get("client_id") != CLIENT_ID or query.get("response_type") != "code":
            return 400, {"error": "invalid_request"}, []
        if query.get("code_challenge_method") != "S256" or "openid" not in query["scope"].split():
            return 400, {"error": "invalid_request"}, []
        back: dict[str, str] = {"state": query["state"]}
        if self.deny is not None:
            back["error"] = self.deny
        else:
            code = secrets.token_urlsafe(16)
            self._grants[code] = _Grant(
                query["nonce"], query["code_challenge"], query["redirect_uri"]
            )
            back["code"] = code
        location = query["redirect_uri"] + "?" + urllib.parse.urlencode(back)
        return 302, None, [(b"location", location.encode())]

    def _token(
        self, headers: dict[str, str], form: dict[str, str]
    ) -> tuple[int, Any, list[tuple[bytes, bytes]]]:
        expected = base64.b64encode(
            f"{urllib.parse.quote_plus(CLIENT_ID)}:{urllib.parse.quote_plus(CLIENT_SECRET)}".encode()
        ).decode()
        if headers.get("authorization") != f"Basic {expected}":
            return 401, {"error": "invalid_client"}, []
        grant = self._grants.pop(form.get("code", ""), None)
        if grant is None or form.get("grant_type") != "authorization_code":
            return 400, {"error": "invalid_grant"}, []
        verifier = form.get("code_verifier", "")
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        if challenge != grant.challenge or form.get("redirect_uri") != grant.redirect_uri:
            return 400, {"error": "invalid_grant"}, []
        self.tokens_issued += 1
        access_token = secrets.token_urlsafe(16)
        self._access_tokens.add(access_token)
        answer = {"access_token": access_token, "token_type": "Bearer"}
        if self.send_id_token:
            answer["id_token"] = self._id_token(grant)
        return 200, answer, []
