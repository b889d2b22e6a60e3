"""An OpenID Connect provider over HTTPS on loopback, standing in for the
remote identity provider single sign-on talks to: discovery, an
authorization endpoint that approves at once, a token endpoint that checks
the client, the code and its PKCE verifier, and the JWKS.

What it puts in the ID token is the test's to change, so that each check
of the homeserver can be made to fail on its own.
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
    authorization endpoint answer with that error.
    """

    subject: str = "subject-1"
    username: str = "alice"
    claims: dict[str, Any] = field(default_factory=dict)
    sign_with: rsa.RSAPrivateKey | None = None
    deny: str | None = None
    issuer: str = ""
    #: Token requests that passed the client, code and PKCE checks.
    tokens_issued: int = 0
    _key: rsa.RSAPrivateKey = field(default_factory=_new_key)
    _grants: dict[str, _Grant] = field(default_factory=dict)

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
        payload = msgspec.json.encode(answer) if answer is not None else b""
        response_headers = [(b"content-type", b"application/json"), *extra]
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
        return 404, {"error": "not_found"}, []

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
        answer = {"access_token": "at", "token_type": "Bearer", "id_token": self._id_token(grant)}
        return 200, answer, []
