"""The client API's HTTP application, driven through ASGI by httpx."""

from collections.abc import Mapping
from typing import Any

import httpx

from ranvier.api.app import ClientApp
from ranvier.errors import MatrixError
from ranvier.web import JsonResponse, Request, Router


def _app() -> ClientApp:
    router = Router()

    async def echo(request: Request) -> Mapping[str, Any]:
        return {"content": request.content, "params": dict(request.path_params)}

    async def refuse(request: Request) -> Mapping[str, Any]:
        raise MatrixError("no", errcode="M_FORBIDDEN", http_status=403)

    async def created(request: Request) -> JsonResponse:
        return JsonResponse({}, status=201)

    async def broken(request: Request) -> Mapping[str, Any]:
        raise RuntimeError("a bug")

    router.add("PUT", "/_matrix/client/v3/echo/{thing}", echo)
    router.add("GET", "/_matrix/client/v3/refuse", refuse)
    router.add("POST", "/_matrix/client/v3/created", created)
    router.add("GET", "/_matrix/client/v3/broken", broken)
    return ClientApp(router=router, max_body_bytes=100)


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://hs")


async def test_a_handler_gets_the_parsed_body_and_decoded_path() -> None:
    async with _client() as client:
        response = await client.put("/_matrix/client/v3/echo/a%20b", json={"x": 1})
    assert response.status_code == 200
    assert response.json() == {"content": {"x": 1}, "params": {"thing": "a b"}}
    assert response.headers["access-control-allow-origin"] == "*"


async def test_errors_are_matrix_errors_with_cors_headers() -> None:
    async with _client() as client:
        refused = await client.get("/_matrix/client/v3/refuse")
        unknown = await client.get("/_matrix/client/v3/nowhere")
        wrong_method = await client.post("/_matrix/client/v3/refuse")
        not_json = await client.put("/_matrix/client/v3/echo/x", content=b"{nope")
        too_large = await client.put("/_matrix/client/v3/echo/x", content=b"[" + b"1," * 60 + b"1]")
        broken = await client.get("/_matrix/client/v3/broken")
    assert (refused.status_code, refused.json()["errcode"]) == (403, "M_FORBIDDEN")
    assert (unknown.status_code, unknown.json()["errcode"]) == (404, "M_UNRECOGNIZED")
    assert (wrong_method.status_code, wrong_method.json()["errcode"]) == (405, "M_UNRECOGNIZED")
    assert (not_json.status_code, not_json.json()["errcode"]) == (400, "M_NOT_JSON")
    assert (too_large.status_code, too_large.json()["errcode"]) == (413, "M_TOO_LARGE")
    assert broken.status_code == 500
    assert broken.json() == {"errcode": "M_UNKNOWN", "error": "internal server error"}
    for response in (refused, unknown, wrong_method, not_json, too_large, broken):
        assert response.headers["access-control-allow-origin"] == "*"


async def test_a_preflight_is_answered_for_any_path() -> None:
    async with _client() as client:
        response = await client.options("/_matrix/client/v3/anything/at/all")
    assert response.status_code == 200
    assert "Authorization" in response.headers["access-control-allow-headers"]
    assert "PUT" in response.headers["access-control-allow-methods"]


async def test_a_handler_may_choose_its_status() -> None:
    async with _client() as client:
        response = await client.post("/_matrix/client/v3/created", json={})
    assert response.status_code == 201
