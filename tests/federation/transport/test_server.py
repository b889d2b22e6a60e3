import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import httpx
import msgspec
import pytest
import trio

from ranvier.errors import MatrixError
from ranvier.federation.transport.request_signing import XMatrixAuth
from ranvier.federation.transport.server import JsonResponse, Request, Router
from ranvier.federation.transport.tls import client_ssl_context
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.signing import SigningKey, generate_signing_key
from ranvier.protocol.x_matrix import XMatrixAuthorization, format_authorization, sign_request

from .conftest import REMOTE, SERVER_NAME, Served

SEND = "/_matrix/federation/v1/send/{txn_id}"


async def _echo(request: Request) -> Mapping[str, Any]:
    return {
        "origin": request.origin,
        "content": request.content,
        "params": dict(request.path_params),
        "query": {name: list(values) for name, values in request.query.items()},
        "uri": request.uri,
    }


def _add_echo(served: Served) -> None:
    served.app.router.add("PUT", SEND, _echo)
    served.app.router.add("GET", "/_matrix/federation/v1/state/{room_id}", _echo)


def _auth(served: Served, *, key: SigningKey | None = None) -> XMatrixAuth:
    return XMatrixAuth(origin=REMOTE, destination=SERVER_NAME, signing_key=key or served.remote_key)


def _header(
    served: Served,
    *,
    method: str = "PUT",
    uri: str = "/_matrix/federation/v1/send/t1",
    content: Any = None,
    destination: str | None = SERVER_NAME,
    key: SigningKey | None = None,
) -> str:
    authorization = sign_request(
        method=method,
        uri=uri,
        origin=REMOTE,
        destination=destination or SERVER_NAME,
        signing_key=key or served.remote_key,
        content=content,
    )
    if destination is None:
        authorization = XMatrixAuthorization(
            authorization.origin, None, authorization.key, authorization.sig
        )
    return format_authorization(authorization)


def _assert_error(response: httpx.Response, status: int, errcode: str, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["errcode"] == errcode
    assert message in body["error"], body["error"]


# --- the router on its own ------------------------------------------------------------


async def _nothing(request: Request) -> Mapping[str, Any]:
    return {}


async def _other(request: Request) -> Mapping[str, Any]:
    return {"other": True}


def test_router_matches_literal_and_parameter_segments() -> None:
    router = Router()
    router.add("PUT", SEND, _nothing)
    router.add("GET", "/_matrix/federation/v1/event/{event_id}", _nothing)
    match = router.match("PUT", "/_matrix/federation/v1/send/abc")
    assert (match.route.pattern, match.params) == (SEND, {"txn_id": "abc"})
    # Parameters are percent-decoded after the path is split, so an encoded
    # '/' (as in room v3 event IDs) stays inside its segment.
    match = router.match("GET", "/_matrix/federation/v1/event/%24ab%2Fc%2Bd")
    assert match.params == {"event_id": "$ab/c+d"}
    # One trailing slash is tolerated.
    assert router.match("put", "/_matrix/federation/v1/send/abc/").params == {"txn_id": "abc"}


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("PUT", "/_matrix/federation/v1/send/", 404, "unrecognized request"),
        ("PUT", "/_matrix/federation/v1/send/a/b", 404, "unrecognized request"),
        ("PUT", "/_matrix/federation/v1/send//", 404, "unrecognized request"),
        ("PUT", "/_matrix/federation/v2/send/a", 404, "unrecognized request"),
        ("GET", "/_matrix/federation/v1/send/a", 405, "GET is not supported on this endpoint"),
        ("PUT", "/_matrix/federation/v1/send/%ff", 400, "does not percent-decode"),
    ],
)
def test_router_refuses(method: str, path: str, status: int, message: str) -> None:
    router = Router()
    router.add("PUT", SEND, _nothing)
    with pytest.raises(MatrixError) as info:
        router.match(method, path)
    assert info.value.http_status == status
    assert info.value.errcode == ("M_INVALID_PARAM" if status == 400 else "M_UNRECOGNIZED")
    assert message in info.value.message


def test_router_prefers_literal_segments() -> None:
    router = Router()
    router.add("GET", "/a/{x}/c", _nothing)
    router.add("GET", "/a/b/{y}", _other)
    router.add("GET", "/a/{x}/{y}", _nothing)
    assert router.match("GET", "/a/b/c").route.handler is _other
    assert router.match("GET", "/a/z/c").route.pattern == "/a/{x}/c"
    assert router.match("GET", "/a/z/z").route.pattern == "/a/{x}/{y}"


def test_router_lists_allowed_methods_and_defaults_authentication() -> None:
    router = Router()
    router.add("GET", "/_matrix/federation/v1/x", _nothing)
    router.add("POST", "/_matrix/federation/v1/x", _nothing, authenticated=False)
    router.add("GET", "/_matrix/key/v2/query/{server}", _nothing)
    assert router.routes() == [
        ("GET", "/_matrix/federation/v1/x", True),
        ("GET", "/_matrix/key/v2/query/{server}", False),
        ("POST", "/_matrix/federation/v1/x", False),
    ]
    with pytest.raises(MatrixError, match=r"only GET, POST"):
        router.match("DELETE", "/_matrix/federation/v1/x")


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("no/slash", "must start with '/'"),
        ("/a/{x}/{x}", "names 'x' twice"),
        ("/a/{x", "malformed parameter"),
        ("/a/pre{x}", "malformed parameter"),
        ("/_matrix/federation/v1/send/{other}", "already routed"),
    ],
)
def test_router_refuses_bad_patterns(pattern: str, message: str) -> None:
    router = Router()
    router.add("PUT", SEND, _nothing)
    with pytest.raises(ValueError, match=message):
        router.add("PUT", pattern, _nothing)


# --- over HTTPS -------------------------------------------------------------------------


async def test_version_needs_no_signature(served: Served) -> None:
    response = await served.client.get("/_matrix/federation/v1/version")
    assert response.status_code == 200
    assert response.json() == {"server": {"name": "ranvier", "version": "0.1.0.dev0"}}


async def test_signed_requests_are_accepted(served: Served) -> None:
    _add_echo(served)
    content = {"pdus": [], "edus": [{"edu_type": "m.typing", "content": {"typing": True}}]}
    response = await served.client.put(
        "/_matrix/federation/v1/send/txn%2F1/", json=content, auth=_auth(served)
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "origin": REMOTE,
        "content": content,
        "params": {"txn_id": "txn/1"},
        "query": {},
        "uri": "/_matrix/federation/v1/send/txn%2F1/",
    }
    response = await served.client.get(
        "/_matrix/federation/v1/state/!room:remote.example",
        params={"event_id": "$e", "x": ["1", "2"]},
        auth=_auth(served),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["params"] == {"room_id": "!room:remote.example"}
    assert body["query"] == {"event_id": ["$e"], "x": ["1", "2"]}
    assert body["content"] is None
    assert served.lookup.asked == [(REMOTE, "ed25519:remote1")] * 2


async def test_header_without_destination_is_accepted(served: Served) -> None:
    _add_echo(served)
    header = _header(served, content={"a": 1}, destination=None)
    assert "destination" not in header
    response = await served.client.put(
        "/_matrix/federation/v1/send/t1", json={"a": 1}, headers={"Authorization": header}
    )
    assert response.status_code == 200, response.text
    assert response.json()["origin"] == REMOTE


async def test_several_signatures_must_all_verify(served: Served) -> None:
    _add_echo(served)
    second = generate_signing_key("remote2")
    served.lookup.add(REMOTE, second)
    good = [_header(served, content={}), _header(served, content={}, key=second)]
    response = await served.client.put(
        "/_matrix/federation/v1/send/t1",
        json={},
        headers=[("Authorization", good[0]), ("Authorization", good[1])],
    )
    assert response.status_code == 200, response.text
    bad = _header(served, content={"other": 1}, key=second)
    response = await served.client.put(
        "/_matrix/federation/v1/send/t1",
        json={},
        headers=[("Authorization", good[0]), ("Authorization", bad)],
    )
    _assert_error(response, 401, "M_UNAUTHORIZED", "does not match this request")


def _failures(served: Served) -> list[tuple[str, dict[str, str], str]]:
    content: dict[str, Any] = {"pdus": []}
    stranger = generate_signing_key("remote1")  # right key ID, wrong key
    unknown = generate_signing_key("nobody")
    forged = _header(served, content=content).replace('origin="remote.example"', 'origin="x.org"')
    return [
        ("no header", {}, "the request has no Authorization header"),
        ("other scheme", {"Authorization": "Bearer abc"}, "uses scheme 'Bearer'"),
        (
            "malformed",
            {"Authorization": 'X-Matrix origin="remote.example",key="ed25519:remote1",sig="x'},
            "malformed X-Matrix Authorization header",
        ),
        (
            "missing sig",
            {"Authorization": 'X-Matrix origin="remote.example",key="ed25519:remote1"'},
            "has no sig",
        ),
        (
            "wrong destination",
            {"Authorization": _header(served, content=content, destination="other.example")},
            "addressed to 'other.example', not to this server ('localhost:8448')",
        ),
        (
            "unknown key",
            {"Authorization": _header(served, content=content, key=unknown)},
            "remote.example has no known key ed25519:nobody",
        ),
        (
            "unknown origin",
            {"Authorization": forged},
            "x.org has no known key ed25519:remote1",
        ),
        (
            "bad signature",
            {"Authorization": _header(served, content=content, key=stranger)},
            "does not match this request",
        ),
        (
            "signature over another body",
            {"Authorization": _header(served, content={"pdus": [1]})},
            "does not match this request",
        ),
        (
            "signature over another uri",
            {
                "Authorization": _header(
                    served, content=content, uri="/_matrix/federation/v1/send/t2"
                )
            },
            "does not match this request",
        ),
        (
            "signature over another method",
            {"Authorization": _header(served, content=content, method="POST")},
            "does not match this request",
        ),
        (
            "signature without the body",
            {"Authorization": _header(served)},
            "does not match this request",
        ),
        (
            "unsupported algorithm",
            {
                "Authorization": _header(served, content=content).replace(
                    "ed25519:remote1", "curve25519:remote1"
                )
            },
            "of an unsupported algorithm",
        ),
        (
            "signature not base64",
            {"Authorization": _header(served, content=content)[:-3] + '!!"'},
            "sig is not unpadded base64",
        ),
    ]


_FAILURE_NAMES = [
    "no header",
    "other scheme",
    "malformed",
    "missing sig",
    "wrong destination",
    "unknown key",
    "unknown origin",
    "bad signature",
    "signature over another body",
    "signature over another uri",
    "signature over another method",
    "signature without the body",
    "unsupported algorithm",
    "signature not base64",
]


@pytest.mark.parametrize("failure", _FAILURE_NAMES)
async def test_each_auth_failure_is_401_naming_it(served: Served, failure: str) -> None:
    _add_echo(served)
    cases = {name: (headers, message) for name, headers, message in _failures(served)}
    assert set(cases) == set(_FAILURE_NAMES)
    headers, message = cases[failure]
    response = await served.client.put(
        "/_matrix/federation/v1/send/t1", json={"pdus": []}, headers=headers
    )
    _assert_error(response, 401, "M_UNAUTHORIZED", message)


async def test_key_lookup_errors_become_401(served: Served) -> None:
    _add_echo(served)
    served.lookup.error = MatrixError("remote.example did not answer", errcode="M_UNKNOWN")
    response = await served.client.put(
        "/_matrix/federation/v1/send/t1", json={}, auth=_auth(served)
    )
    _assert_error(
        response,
        401,
        "M_UNAUTHORIZED",
        "cannot get key ed25519:remote1 of remote.example: remote.example did not answer",
    )


async def test_unknown_route_and_method(served: Served) -> None:
    _add_echo(served)
    for path in ("/_matrix/federation/v1/nothing", "/_matrix/client/v3/sync", "/"):
        response = await served.client.get(path)
        _assert_error(response, 404, "M_UNRECOGNIZED", "unrecognized request")
    response = await served.client.post("/_matrix/federation/v1/send/t1", json={})
    _assert_error(response, 405, "M_UNRECOGNIZED", "POST is not supported")


async def test_bad_json_bodies(served: Served) -> None:
    _add_echo(served)
    header = _header(served, content={"a": 1})
    for body in (b"{not json", b'{"a": 1', b"\xff\xfe"):
        response = await served.client.put(
            "/_matrix/federation/v1/send/t1", content=body, headers={"Authorization": header}
        )
        _assert_error(response, 400, "M_NOT_JSON", "the request body is not valid JSON")
    # Valid JSON, but no signature can cover a float: canonical JSON has none.
    response = await served.client.put(
        "/_matrix/federation/v1/send/t1",
        content=b'{"a": 1.5}',
        headers={"Authorization": header},
    )
    _assert_error(response, 400, "M_BAD_JSON", "not allowed in canonical JSON")


async def test_body_size_limit(served: Served) -> None:
    _add_echo(served)
    limit = served.app.max_body_bytes
    content = {"pad": "x" * limit}
    header = _header(served, content=content)
    response = await served.client.put(
        "/_matrix/federation/v1/send/t1", json=content, headers={"Authorization": header}
    )
    _assert_error(response, 413, "M_TOO_LARGE", f"larger than {limit} bytes")

    # A chunked body (no Content-Length) is cut off where it passes the
    # limit: the handler never sees it, and the server closes the connection
    # rather than read the rest. A client still sending then may get the 413
    # or only a reset, depending on timing; the server serves on.
    calls: list[Request] = []

    async def counting(request: Request) -> Mapping[str, Any]:
        calls.append(request)
        return {}

    served.app.router.add("PUT", "/_matrix/federation/v1/counted", counting)
    stream = await trio.open_ssl_over_tcp_stream(
        "localhost", served.port, ssl_context=client_ssl_context(ca_file=served.certificate)
    )
    async with stream:
        head = (
            "PUT /_matrix/federation/v1/counted HTTP/1.1\r\nHost: localhost\r\n"
            f"Authorization: {header}\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        answer = b""
        try:
            await stream.send_all(head.encode("latin-1"))
            for _ in range(limit // 1000 + 50):
                await stream.send_all(b"3e8\r\n" + b" " * 1000 + b"\r\n")
            await stream.send_all(b"0\r\n\r\n")
        except trio.BrokenResourceError:
            pass
        with contextlib.suppress(trio.BrokenResourceError):
            while chunk := await stream.receive_some():
                answer += chunk
    assert answer == b"" or answer.startswith(b"HTTP/1.1 413 ")
    assert calls == []
    response = await served.client.get("/_matrix/federation/v1/version")
    assert response.status_code == 200

    # Just under the limit is fine.
    content = {"pad": "x" * (limit - 100)}
    assert len(encode_canonical_json(content)) < limit
    response = await served.client.put(
        "/_matrix/federation/v1/send/t1", json=content, auth=_auth(served)
    )
    assert response.status_code == 200, response.text


async def test_handler_results_and_errors(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    async def created(request: Request) -> JsonResponse:
        return JsonResponse([200, {"ok": True}], status=201, headers=[("X-Thing", "1")])

    async def refused(request: Request) -> Mapping[str, Any]:
        raise MatrixError("not in that room", errcode="M_FORBIDDEN", http_status=403)

    async def broken(request: Request) -> Mapping[str, Any]:
        raise RuntimeError("secret detail")

    async def unencodable(request: Request) -> Mapping[str, Any]:
        return {"x": object()}

    router = served.app.router
    router.add("GET", "/_matrix/federation/v1/created", created, authenticated=False)
    router.add("GET", "/_matrix/federation/v1/refused", refused, authenticated=False)
    router.add("GET", "/_matrix/federation/v1/broken", broken, authenticated=False)
    router.add("GET", "/_matrix/federation/v1/unencodable", unencodable, authenticated=False)

    response = await served.client.get("/_matrix/federation/v1/created")
    assert (response.status_code, response.json()) == (201, [200, {"ok": True}])
    assert response.headers["x-thing"] == "1"
    response = await served.client.get("/_matrix/federation/v1/refused")
    _assert_error(response, 403, "M_FORBIDDEN", "not in that room")
    with caplog.at_level(logging.ERROR, logger="ranvier.federation.transport.server"):
        for path in ("/_matrix/federation/v1/broken", "/_matrix/federation/v1/unencodable"):
            response = await served.client.get(path)
            _assert_error(response, 500, "M_UNKNOWN", "internal server error")
            assert "secret" not in response.text
    assert [record.getMessage() for record in caplog.records] == [
        "GET /_matrix/federation/v1/broken failed",
        "GET /_matrix/federation/v1/unencodable failed",
    ]


async def test_responses_are_json_with_length(served: Served) -> None:
    response = await served.client.get("/_matrix/federation/v1/version")
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    assert msgspec.json.decode(response.content) == response.json()


async def test_on_authenticated_hears_each_signed_request_before_its_handler(
    served: Served,
) -> None:
    heard: list[str] = []
    served.app.on_authenticated = heard.append

    async def refuse(request: Request) -> Mapping[str, Any]:
        # Heard of already, though the handler refuses the request.
        assert heard == [REMOTE]
        raise MatrixError("not in that room", errcode="M_FORBIDDEN", http_status=403)

    served.app.router.add("GET", "/_matrix/federation/v1/refused", refuse)
    response = await served.client.get("/_matrix/federation/v1/refused", auth=_auth(served))
    _assert_error(response, 403, "M_FORBIDDEN", "not in that room")
    assert heard == [REMOTE]


@pytest.mark.parametrize("failure", ["no header", "unknown key", "bad signature"])
async def test_on_authenticated_hears_nothing_of_requests_that_fail_auth(
    served: Served, failure: str
) -> None:
    _add_echo(served)
    heard: list[str] = []
    served.app.on_authenticated = heard.append
    headers, _ = {name: (h, m) for name, h, m in _failures(served)}[failure]
    response = await served.client.put(
        "/_matrix/federation/v1/send/t1", json={"pdus": []}, headers=headers
    )
    assert response.status_code == 401
    # Nor of requests that need no signature.
    response = await served.client.get("/_matrix/federation/v1/version")
    assert response.status_code == 200
    assert heard == []
