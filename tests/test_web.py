from __future__ import annotations

from typing import Any

import pytest

from ranvier.errors import MatrixError
from ranvier.web import Request, Router


async def _handler(request: Request) -> dict[str, Any]:
    return {}


async def _other(request: Request) -> dict[str, Any]:
    return {}


def test_a_route_added_after_a_match_is_matched() -> None:
    router = Router()
    router.add("GET", "/_matrix/client/v3/a/{x}", _handler)
    assert router.match("GET", "/_matrix/client/v3/a/1").route.handler is _handler
    router.add("GET", "/_matrix/client/v3/a/b", _other)
    assert router.match("GET", "/_matrix/client/v3/a/b").route.handler is _other
    assert router.match("GET", "/_matrix/client/v3/a/1").params == {"x": "1"}


def test_a_route_whose_first_segment_is_a_parameter_is_matched() -> None:
    router = Router()
    router.add("GET", "/_matrix/client/v3/{x}", _handler)
    router.add("GET", "/{first}/client/v3/thing", _other)
    match = router.match("GET", "/anything/client/v3/thing")
    assert match.route.handler is _other
    assert match.params == {"first": "anything"}
    assert router.match("GET", "/_matrix/client/v3/thing").route.handler is _handler


def test_a_path_of_another_length_or_start_is_not_found_and_another_method_not_allowed() -> None:
    router = Router()
    router.add("PUT", "/_matrix/client/v3/rooms/{room}/send/{type}/{txn}", _handler)
    router.add("GET", "/_matrix/client/v3/rooms/{room}/{what}/{type}/{txn}", _other)
    with pytest.raises(MatrixError) as not_found:
        router.match("PUT", "/_matrix/client/v3/rooms/r/send/t")
    assert not_found.value.http_status == 404
    with pytest.raises(MatrixError) as other_start:
        router.match("PUT", "/_other/client/v3/rooms/r/send/t/1")
    assert other_start.value.http_status == 404
    with pytest.raises(MatrixError) as not_allowed:
        router.match("POST", "/_matrix/client/v3/rooms/r/send/t/1")
    assert not_allowed.value.http_status == 405
    assert "GET, PUT" in not_allowed.value.message
    # With a trailing slash, as some servers send.
    assert router.match("PUT", "/_matrix/client/v3/rooms/r/send/t/1/").params["txn"] == "1"
