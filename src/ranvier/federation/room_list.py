"""The public room list over federation: ``GET`` and ``POST /_matrix/federation/v1/publicRooms``.

Both sides: :func:`add_public_rooms_routes` shows other servers the rooms
published in this server's list (:class:`ranvier.core.room_list.RoomList`),
and :class:`FederationRoomListClient` asks another server for a page of
its list, for the client API's ``/publicRooms?server=``.

``third_party_instance_id`` and ``include_all_networks`` choose the
lists read as they do for clients: the server's own list alone by
default, one application service network's list, or all of them. A
``limit`` of 0 means no limit, as the spec has it.

A room of another server's answer is kept with the spec's fields alone,
each of the right type; one that lacks a required field is left out. An
answer that is not a room list at all is a 502.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from ranvier.core.room_list import RoomList
from ranvier.errors import BadJsonError
from ranvier.federation.transport.client import FederationError, FederationHttpClient
from ranvier.federation.transport.server import Request, Router
from ranvier.protocol.untrusted_json import decode_untrusted_json
from ranvier.web import flag_param, integer_param

from .query_client import unusable_answer

__all__ = ["PUBLIC_ROOMS_PATH", "FederationRoomListClient", "add_public_rooms_routes"]

PUBLIC_ROOMS_PATH: Final = "/_matrix/federation/v1/publicRooms"
_WHAT: Final = "public room list"
#: The most an answer may weigh.
_MAX_ANSWER_BYTES: Final = 4 * 1024 * 1024
_STRINGS: Final = ("name", "topic", "canonical_alias", "avatar_url", "join_rule", "room_type")
_FLAGS: Final = ("world_readable", "guest_can_join")


def _no_limit_at_zero(limit: int | None) -> int | None:
    return None if limit == 0 else limit


def add_public_rooms_routes(router: Router, room_list: RoomList) -> None:
    """Serve this server's published rooms to signed requests."""

    async def get_public_rooms(request: Request) -> Mapping[str, Any]:
        limit = integer_param(request, "limit")
        return await room_list.public_rooms(
            limit=_no_limit_at_zero(limit),
            since=request.query_value("since"),
            include_all_networks=bool(flag_param(request, "include_all_networks")),
            third_party_instance_id=request.query_value("third_party_instance_id"),
        )

    async def post_public_rooms(request: Request) -> Mapping[str, Any]:
        body = request.content
        if not isinstance(body, dict):
            raise BadJsonError("the request body must be a JSON object")
        limit, since = body.get("limit"), body.get("since")
        search_filter = body.get("filter")
        everything = body.get("include_all_networks", False)
        instance = body.get("third_party_instance_id")
        if limit is not None and (type(limit) is not int or limit < 0):
            raise BadJsonError("'limit' must be a non-negative integer")
        if since is not None and not isinstance(since, str):
            raise BadJsonError("'since' must be a string")
        if not isinstance(everything, bool):
            raise BadJsonError("'include_all_networks' must be true or false")
        if instance is not None and not isinstance(instance, str):
            raise BadJsonError("'third_party_instance_id' must be a string")
        term = None
        if search_filter is not None:
            if not isinstance(search_filter, dict):
                raise BadJsonError("'filter' must be an object")
            term = search_filter.get("generic_search_term")
            if term is not None and not isinstance(term, str):
                raise BadJsonError("'generic_search_term' must be a string")
        return await room_list.public_rooms(
            limit=_no_limit_at_zero(limit),
            since=since,
            search=term,
            include_all_networks=everything,
            third_party_instance_id=instance,
        )

    router.add("GET", PUBLIC_ROOMS_PATH, get_public_rooms)
    router.add("POST", PUBLIC_ROOMS_PATH, post_public_rooms)


def _room(raw: object) -> dict[str, Any] | None:
    """The spec's fields of one listed room, or None when a required one is
    missing or of the wrong type."""
    if not isinstance(raw, dict):
        return None
    room_id, members = raw.get("room_id"), raw.get("num_joined_members")
    if not isinstance(room_id, str) or not room_id.startswith("!") or type(members) is not int:
        return None
    if not all(isinstance(raw.get(flag), bool) for flag in _FLAGS):
        return None
    room: dict[str, Any] = {"room_id": room_id, "num_joined_members": members}
    room.update({flag: raw[flag] for flag in _FLAGS})
    room.update({name: raw[name] for name in _STRINGS if isinstance(raw.get(name), str)})
    return room


def _page(server_name: str, answer: object) -> dict[str, Any]:
    if not isinstance(answer, dict) or not isinstance(answer.get("chunk"), list):
        raise unusable_answer(server_name, _WHAT, "the answer has no list of rooms in 'chunk'")
    rooms = [room for raw in answer["chunk"] if (room := _room(raw)) is not None]
    page: dict[str, Any] = {"chunk": rooms}
    for token in ("next_batch", "prev_batch"):
        if isinstance(answer.get(token), str):
            page[token] = answer[token]
    estimate = answer.get("total_room_count_estimate")
    if type(estimate) is int and estimate >= 0:
        page["total_room_count_estimate"] = estimate
    return page


class FederationRoomListClient:
    """Asks another server for a page of its public room list: ``GET``
    without a search term, ``POST`` with one."""

    def __init__(self, client: FederationHttpClient) -> None:
        self._client = client

    async def query_public_rooms(
        self,
        server_name: str,
        *,
        limit: int | None,
        since: str | None,
        search: str | None,
        include_all_networks: bool = False,
        third_party_instance_id: str | None = None,
    ) -> dict[str, Any]:
        try:
            if search is None:
                query: dict[str, str] = {}
                if limit is not None:
                    query["limit"] = str(limit)
                if since is not None:
                    query["since"] = since
                if include_all_networks:
                    query["include_all_networks"] = "true"
                if third_party_instance_id is not None:
                    query["third_party_instance_id"] = third_party_instance_id
                response = await self._client.request(
                    "GET",
                    server_name,
                    PUBLIC_ROOMS_PATH,
                    query=query,
                    max_response_bytes=_MAX_ANSWER_BYTES,
                )
            else:
                body: dict[str, Any] = {"filter": {"generic_search_term": search}}
                if limit is not None:
                    body["limit"] = limit
                if since is not None:
                    body["since"] = since
                if include_all_networks:
                    body["include_all_networks"] = True
                if third_party_instance_id is not None:
                    body["third_party_instance_id"] = third_party_instance_id
                response = await self._client.request(
                    "POST",
                    server_name,
                    PUBLIC_ROOMS_PATH,
                    content=body,
                    max_response_bytes=_MAX_ANSWER_BYTES,
                )
            answer = decode_untrusted_json(response.body)
        except FederationError as exc:
            raise unusable_answer(server_name, _WHAT, str(exc)) from None
        except msgspec.DecodeError as exc:
            raise unusable_answer(server_name, _WHAT, f"the answer is not JSON: {exc}") from None
        return _page(server_name, answer)
