"""Federation request authentication: the ``X-Matrix`` Authorization scheme.

A homeserver proves that it sent a request by signing a JSON object that
describes it (server-server API, "Request Authentication"): the HTTP method,
the request target as sent (``/_matrix/...`` with its query string), the
sending server (``origin``), the receiving server (``destination``) and, if
the request has a body, the parsed body as ``content``. The signature goes
into the ``Authorization`` header, for example::

    X-Matrix origin="a.example",destination="b.example",key="ed25519:k1",sig="..."

The receiver rebuilds the same object from the request it got, with its own
name as ``destination``, and checks the signature with the origin's key. So
anything that changes the method, target, body or the intended receiver on
the way breaks the signature.

The header follows the ``auth-param`` syntax of RFC 9110 section 11: names
are case-insensitive, values are tokens or quoted strings (with backslash
escapes), list items are separated by commas with optional whitespace, empty
items are allowed and unknown parameters are ignored. As the spec asks,
bare values may also hold ``:``, since some servers send server names and
key IDs unquoted. Parsing is lenient where RFC 9110 is (whitespace around
``=``, empty list items) and strict elsewhere: a parameter given twice is
refused, because two origins or two signatures leave the request ambiguous.

Nothing here does I/O. Finding the origin's key is the caller's work; this
module only says which key is needed (:attr:`XMatrixAuthorization.key`) and
checks the signature once the key is known.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import nacl.exceptions

from ranvier.errors import BadJsonError, InvalidSignatureError
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.signing import (
    SigningKeyLike,
    VerifyKeyLike,
    key_id,
    sign_json,
    verify_signed_json,
)
from ranvier.protocol.unpadded_base64 import decode_unpadded_base64

__all__ = [
    "SCHEME",
    "XMatrixAuthorization",
    "format_authorization",
    "is_server_name",
    "parse_authorization",
    "request_signing_json",
    "sign_request",
    "split_server_name",
    "verify_request",
]

#: The authentication scheme's name, as senders should write it.
SCHEME: Final = "X-Matrix"

# RFC 9110 section 5.6.2: the characters of a token.
_TCHARS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
# Bare values may also hold ':' (server names with ports, key IDs).
_BARE_VALUE_CHARS: Final = _TCHARS | {":"}
_WHITESPACE: Final = " \t"

# The appendices' server name grammar.
_DNS_CHARS: Final = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-")
_IPV6_CHARS: Final = frozenset("0123456789abcdefABCDEF:.")
_MAX_PORT: Final = 65535
_SIGNATURE_BYTES: Final = 64


@dataclass(frozen=True, slots=True)
class XMatrixAuthorization:
    """The parameters of one ``X-Matrix`` Authorization header.

    ``destination`` is None when the sender left it out: the spec asks
    receivers to accept that, from servers older than its v1.3.
    """

    origin: str
    destination: str | None
    key: str
    sig: str


def split_server_name(name: str) -> tuple[str, int | None]:
    """Split a server name into its host and optional port, checking the grammar.

    The grammar (appendices, "Server Name") allows a DNS name or IPv4
    address of letters, digits, ``.`` and ``-``, or an IPv6 address in
    brackets, then an optional ``:port``. Bracketed IPv6 addresses are also
    held to the address syntax and ports to 1-65535, which the grammar's
    character classes do not say but no reachable server can break.

    Raises ValueError saying what is wrong; callers turn it into their own
    error (a config error, a 401 for a request's origin).
    """
    if not isinstance(name, str) or not name:
        raise ValueError("a server name must not be empty")
    if name.startswith("["):
        end = name.find("]")
        if end < 0:
            raise ValueError(
                f"server name {name!r} opens '[' for an IPv6 address but never closes it"
            )
        host, rest = name[: end + 1], name[end + 1 :]
        address = host[1:-1]
        if not 2 <= len(address) <= 45 or not set(address) <= _IPV6_CHARS:
            raise ValueError(f"server name {name!r} has an invalid IPv6 address")
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            raise ValueError(f"server name {name!r} has an invalid IPv6 address") from None
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"server name {name!r} has {rest!r} after its IPv6 address")
        return host, _parse_port(name, rest[1:])
    host, sep, port = name.partition(":")
    if not host:
        raise ValueError(f"server name {name!r} has no host")
    if len(host) > 255:
        raise ValueError(f"server name {name!r} has a host longer than 255 characters")
    bad = set(host) - _DNS_CHARS
    if bad:
        shown = ", ".join(repr(char) for char in sorted(bad))
        raise ValueError(f"server name {name!r} has characters not allowed in a host name: {shown}")
    return host, _parse_port(name, port) if sep else None


def is_server_name(value: str) -> bool:
    """Whether ``value`` is a valid server name (the appendices' grammar)."""
    try:
        split_server_name(value)
    except ValueError:
        return False
    return True


def _parse_port(name: str, port: str) -> int:
    if not 1 <= len(port) <= 5 or not port.isascii() or not port.isdigit():
        raise ValueError(f"server name {name!r} has a port that is not 1 to 5 digits")
    number = int(port)
    if not 1 <= number <= _MAX_PORT:
        raise ValueError(f"server name {name!r} has port {number}, outside 1-{_MAX_PORT}")
    return number


def request_signing_json(
    *,
    method: str,
    uri: str,
    origin: str,
    destination: str,
    content: Any = None,
) -> dict[str, Any]:
    """The object whose signature authenticates a request.

    ``uri`` is the request target exactly as sent: path and query string,
    percent-encoding untouched, no scheme or host. ``content`` is the parsed
    JSON body, or None for a request without one (the key is then left out).
    """
    obj: dict[str, Any] = {
        "method": method,
        "uri": uri,
        "origin": origin,
        "destination": destination,
    }
    if content is not None:
        obj["content"] = content
    return obj


def sign_request(
    *,
    method: str,
    uri: str,
    origin: str,
    destination: str,
    signing_key: SigningKeyLike,
    content: Any = None,
) -> XMatrixAuthorization:
    """Sign a request as ``origin`` and return the header parameters.

    Raises :class:`~ranvier.errors.BadJsonError` if ``content`` holds
    values canonical JSON cannot encode: the receiver could not check such
    a signature.
    """
    signed = sign_json(
        request_signing_json(
            method=method, uri=uri, origin=origin, destination=destination, content=content
        ),
        origin,
        signing_key,
    )
    name = key_id(signing_key)
    return XMatrixAuthorization(
        origin=origin,
        destination=destination,
        key=name,
        sig=signed["signatures"][origin][name],
    )


def verify_request(
    authorization: XMatrixAuthorization,
    *,
    method: str,
    uri: str,
    our_server_name: str,
    verify_key: VerifyKeyLike,
    content: Any = None,
    raw_content: bytes | None = None,
) -> None:
    """Check that the request was signed by its origin and meant for us.

    ``verify_key`` is the origin's key named by ``authorization.key``. The
    signed object is rebuilt with ``our_server_name`` as destination, so a
    request signed for another server fails even when the header leaves
    ``destination`` out.

    ``raw_content``, the body as received, is tried first in place of the
    canonical JSON of ``content``: most servers send bodies in canonical
    form already, and a signature made over exactly these bytes, spliced
    into the object after ``"content":``, proves the same as one over the
    re-encoded body without the cost of encoding it. The other members of
    the object come after ``content`` in canonical order and cannot hold an
    unescaped quote, so no other method, URI, origin or destination signs
    the same bytes. When it does not verify, the canonical form is checked
    as before.

    Returns nothing on success; raises
    :class:`~ranvier.errors.InvalidSignatureError` (401 M_UNAUTHORIZED)
    saying which check failed.
    """
    destination = authorization.destination
    if destination is not None and destination != our_server_name:
        raise InvalidSignatureError(
            f"the request is addressed to {destination!r}, not to this server ({our_server_name!r})"
        )
    if key_id(verify_key) != authorization.key:
        raise InvalidSignatureError(
            f"the request names key {authorization.key!r} but was checked against"
            f" key {key_id(verify_key)!r}"
        )
    signature = _check_signature_shape(authorization)
    if raw_content is not None:
        rest = encode_canonical_json(
            {
                "destination": our_server_name,
                "method": method,
                "origin": authorization.origin,
                "uri": uri,
            }
        )
        try:
            verify_key.verify(b'{"content":' + raw_content + b"," + rest[1:], signature)
        except nacl.exceptions.BadSignatureError:
            pass
        else:
            return
    obj = request_signing_json(
        method=method,
        uri=uri,
        origin=authorization.origin,
        destination=our_server_name,
        content=content,
    )
    obj["signatures"] = {authorization.origin: {authorization.key: authorization.sig}}
    try:
        verify_signed_json(obj, authorization.origin, verify_key)
    except InvalidSignatureError:
        raise InvalidSignatureError(
            f"the signature from {authorization.origin} with key {authorization.key}"
            " does not match this request (its method, URI, destination or body)"
        ) from None


def _check_signature_shape(authorization: XMatrixAuthorization) -> bytes:
    # Checked here, before the signature is, so that a failure of the check
    # itself can only mean that the signature does not match.
    try:
        signature = decode_unpadded_base64(authorization.sig)
    except BadJsonError:
        raise InvalidSignatureError(
            "the X-Matrix Authorization header's sig is not unpadded base64"
        ) from None
    if len(signature) != _SIGNATURE_BYTES:
        raise InvalidSignatureError(
            f"the X-Matrix Authorization header's sig is {len(signature)} bytes,"
            f" an ed25519 signature is {_SIGNATURE_BYTES}"
        )
    return signature


def format_authorization(authorization: XMatrixAuthorization) -> str:
    """The Authorization header value for ``authorization``.

    Written the way the spec asks senders to: one space after the scheme,
    lower-case names, every value quoted, no whitespace around commas.
    Values are escaped where they need it, though the values Matrix uses
    (server names, key IDs, unpadded base64) never do.
    """
    params: list[tuple[str, str]] = [("origin", authorization.origin)]
    if authorization.destination is not None:
        params.append(("destination", authorization.destination))
    params.append(("key", authorization.key))
    params.append(("sig", authorization.sig))
    return SCHEME + " " + ",".join(f"{name}={_quote(value)}" for name, value in params)


def _quote(value: str) -> str:
    for char in value:
        if not (char == "\t" or " " <= char <= "~"):
            raise ValueError(f"cannot send {char!r} in an X-Matrix header value")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_authorization(header: str) -> XMatrixAuthorization:
    """Parse an ``X-Matrix`` Authorization header value.

    Raises :class:`~ranvier.errors.InvalidSignatureError` (401
    M_UNAUTHORIZED) naming what is wrong: another scheme, a syntax error and
    where it is, a repeated parameter, or a missing or empty ``origin``,
    ``key`` or ``sig``. ``origin`` and ``destination`` must be server names.
    """
    params = _parse_params(header)
    values: dict[str, str] = {}
    for name in ("origin", "key", "sig"):
        value = params.get(name)
        if value is None:
            raise InvalidSignatureError(f"the X-Matrix Authorization header has no {name}")
        if not value:
            raise InvalidSignatureError(f"the X-Matrix Authorization header has an empty {name}")
        values[name] = value
    destination = params.get("destination")
    for name, server_name in (("origin", values["origin"]), ("destination", destination)):
        if server_name is None:
            continue
        try:
            split_server_name(server_name)
        except ValueError as exc:
            raise InvalidSignatureError(
                f"the X-Matrix Authorization header's {name} is not a server name: {exc}"
            ) from None
    return XMatrixAuthorization(
        origin=values["origin"],
        destination=destination,
        key=values["key"],
        sig=values["sig"],
    )


def _malformed(problem: str) -> InvalidSignatureError:
    return InvalidSignatureError(f"malformed X-Matrix Authorization header: {problem}")


def _parse_params(header: str) -> Mapping[str, str]:
    scheme_end = 0
    while scheme_end < len(header) and header[scheme_end] not in _WHITESPACE:
        scheme_end += 1
    scheme = header[:scheme_end]
    if scheme.lower() != SCHEME.lower():
        shown = scheme if len(scheme) <= 32 else scheme[:32] + "..."
        raise InvalidSignatureError(f"the Authorization header uses scheme {shown!r}, not {SCHEME}")
    if scheme_end == len(header):
        raise _malformed("no parameters after the scheme")
    params: dict[str, str] = {}
    pos = _skip_whitespace(header, scheme_end)
    end = len(header)
    while pos < end:
        if header[pos] == ",":
            # An empty list item, which RFC 9110 tells recipients to accept.
            pos = _skip_whitespace(header, pos + 1)
            continue
        name_start = pos
        while pos < end and header[pos] in _TCHARS:
            pos += 1
        if pos == name_start:
            raise _malformed(f"expected a parameter name at position {pos}, found {header[pos]!r}")
        name = header[name_start:pos].lower()
        pos = _skip_whitespace(header, pos)
        if pos >= end or header[pos] != "=":
            raise _malformed(f"parameter {name!r} has no '=' and value")
        pos = _skip_whitespace(header, pos + 1)
        if pos < end and header[pos] == '"':
            value, pos = _parse_quoted(header, pos, name)
        else:
            value_start = pos
            while pos < end and header[pos] in _BARE_VALUE_CHARS:
                pos += 1
            if pos == value_start:
                found = repr(header[pos]) if pos < end else "the end of the header"
                raise _malformed(f"parameter {name!r} has no value (found {found})")
            value = header[value_start:pos]
        if name in params:
            raise _malformed(f"parameter {name!r} appears more than once")
        params[name] = value
        pos = _skip_whitespace(header, pos)
        if pos < end:
            if header[pos] != ",":
                raise _malformed(
                    f"expected ',' after parameter {name!r} at position {pos},"
                    f" found {header[pos]!r}"
                )
            pos = _skip_whitespace(header, pos + 1)
    return params


def _skip_whitespace(header: str, pos: int) -> int:
    while pos < len(header) and header[pos] in _WHITESPACE:
        pos += 1
    return pos


def _parse_quoted(header: str, pos: int, name: str) -> tuple[str, int]:
    # ``pos`` is at the opening quote; returns the unescaped value and the
    # position after the closing quote.
    chars: list[str] = []
    pos += 1
    end = len(header)
    while pos < end:
        char = header[pos]
        if char == '"':
            return "".join(chars), pos + 1
        if char == "\\":
            pos += 1
            if pos == end:
                break
            char = header[pos]
        if char != "\t" and (char < " " or char == "\x7f"):
            raise _malformed(f"parameter {name!r} holds control character {char!r}")
        chars.append(char)
        pos += 1
    raise _malformed(f"the quoted value of parameter {name!r} is not closed")
