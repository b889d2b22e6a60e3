"""The public room list over federation, ``/_matrix/federation/v1/publicRooms``:
one homeserver's published rooms read by another's client API
(``/publicRooms?server=``) over loopback TLS, its application services'
networks' lists as asked for, and what the asking side keeps of a list
server's answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from ranvier.errors import MatrixError
from ranvier.federation.room_list import PUBLIC_ROOMS_PATH, FederationRoomListClient
from ranvier.federation.transport.client import FederationRequestError
from ranvier.federation.transport.server import FederationApp
from ranvier.testing import KnownKeys, ZoneDns, serve
from ranvier.testing.homeserver import config_for_tests, open_test_homeserver
from ranvier.testing.network import Pki
from ranvier.web import JsonResponse, Request

from ._resident import open_peer

_PUBLIC_ROOMS = "/_matrix/client/v3/publicRooms"


def _ids(page: dict[str, Any]) -> list[str]:
    return [room["room_id"] for room in page["chunk"]]


async def test_one_server_reads_another_s_published_rooms(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    async with (
        open_test_homeserver(tmp_path / "a", federation=pki) as a,
        open_test_homeserver(tmp_path / "b", federation=pki) as b,
    ):
        alice = (await a.register_user("alice")).user_id
        big = await a.server.create_room(alice, preset="public_chat", name="Big hall")
        small = await a.server.create_room(alice, preset="public_chat", name="Small hall")
        unlisted = await a.server.create_room(alice, preset="public_chat", name="Back room")
        await a.server.room_list.set_visibility(alice, big, "public")
        await a.server.room_list.set_visibility(alice, small, "public")
        carol = (await a.register_user("carol")).user_id
        await a.server.join_room(carol, big)
        bob = await b.register_user("bob")
        asked = {"server": a.server_name}

        async with b.client(bob, verify=pki.client_context()) as http:
            listed = (await http.get(_PUBLIC_ROOMS, params=asked)).json()
            assert _ids(listed) == [big, small]
            assert listed["total_room_count_estimate"] == 2
            assert listed["chunk"][0] == {
                "room_id": big,
                "name": "Big hall",
                "num_joined_members": 2,
                "world_readable": False,
                "guest_can_join": False,
                "join_rule": "public",
            }
            first = (await http.get(_PUBLIC_ROOMS, params={**asked, "limit": "1"})).json()
            assert _ids(first) == [big]
            since = {**asked, "limit": "1", "since": first["next_batch"]}
            second = (await http.get(_PUBLIC_ROOMS, params=since)).json()
            assert _ids(second) == [small]
            assert "next_batch" not in second
            searched = await http.post(
                _PUBLIC_ROOMS, params=asked, json={"filter": {"generic_search_term": "SMALL"}}
            )
            assert _ids(searched.json()) == [small]
            missed = await http.post(
                _PUBLIC_ROOMS, params=asked, json={"filter": {"generic_search_term": "back"}}
            )
            assert missed.json()["chunk"] == []
            assert unlisted not in _ids(listed)

        # The federation routes themselves.
        client = b.server.federation_client
        everything = await client.get_json(a.server_name, PUBLIC_ROOMS_PATH, query={"limit": 0})
        assert _ids(everything) == [big, small]
        irc = {"third_party_instance_id": "irc"}
        none = await client.get_json(a.server_name, PUBLIC_ROOMS_PATH, query=irc)
        assert none == {"chunk": [], "total_room_count_estimate": 0}
        all_networks = {**irc, "include_all_networks": "true"}
        assert _ids(await client.get_json(a.server_name, PUBLIC_ROOMS_PATH, query=all_networks))
        posted = await client.post_json(a.server_name, PUBLIC_ROOMS_PATH, {"limit": 1})
        assert _ids(posted) == [big]
        for query in ({"limit": "x"}, {"include_all_networks": "maybe"}, {"since": "x"}):
            with pytest.raises(FederationRequestError) as caught:
                await client.get_json(a.server_name, PUBLIC_ROOMS_PATH, query=query)
            assert (caught.value.status, caught.value.errcode) == (400, "M_INVALID_PARAM")
        bad_bodies: list[dict[str, Any]] = [
            {"limit": -1},
            {"filter": []},
            {"include_all_networks": "yes"},
        ]
        for body in bad_bodies:
            with pytest.raises(FederationRequestError) as caught:
                await client.post_json(a.server_name, PUBLIC_ROOMS_PATH, body)
            assert (caught.value.status, caught.value.errcode) == (400, "M_BAD_JSON")


_ROOM: dict[str, Any] = {
    "room_id": "!r:stand.in",
    "num_joined_members": 3,
    "world_readable": True,
    "guest_can_join": False,
    "name": "Kept",
}


@pytest.mark.parametrize(
    ("answer", "status", "kept"),
    [
        (
            {
                "chunk": [
                    {**_ROOM, "unknown": 1, "topic": 5},
                    {**_ROOM, "room_id": "!nomembers:stand.in", "num_joined_members": "3"},
                    {**_ROOM, "room_id": "no room"},
                    "not a room",
                ],
                "next_batch": "n1",
                "total_room_count_estimate": 9,
            },
            200,
            {"chunk": [_ROOM], "next_batch": "n1", "total_room_count_estimate": 9},
        ),
        ({"chunk": "rooms"}, 200, None),
        ({"rooms": []}, 200, None),
        ({"errcode": "M_FORBIDDEN", "error": "not published"}, 403, None),
        ({"errcode": "M_NOT_FOUND", "error": "no list"}, 404, None),
    ],
)
async def test_the_client_keeps_only_what_the_spec_gives_a_listed_room(
    tmp_path: Path,
    nursery: trio.Nursery,
    answer: dict[str, Any],
    status: int,
    kept: dict[str, Any] | None,
) -> None:
    pki = Pki.create(tmp_path)
    keys = KnownKeys()
    asked: list[tuple[str, dict[str, str], Any]] = []

    async def public_rooms(request: Request) -> JsonResponse:
        await trio.lowlevel.checkpoint()
        query = {name: request.query_value(name) or "" for name in ("limit", "since")}
        asked.append((request.method, query, request.content))
        return JsonResponse(answer, status=status)

    app = FederationApp(server_name="stand.in", key_lookup=keys)
    app.router.add("GET", PUBLIC_ROOMS_PATH, public_rooms)
    app.router.add("POST", PUBLIC_ROOMS_PATH, public_rooms)
    port = await serve(nursery, app, pki.server_context("stand.in"))
    app.server_name = f"stand.in:{port}"
    peer = await open_peer(nursery, pki, ZoneDns.loopback("stand.in"), keys, "asking.test")
    client = FederationRoomListClient(peer.client)
    server = f"stand.in:{port}"
    if kept is None:
        with pytest.raises(MatrixError) as caught:
            await client.query_public_rooms(server, limit=5, since="s1", search=None)
        assert (caught.value.http_status, caught.value.errcode) == (502, "M_UNKNOWN")
        return
    assert await client.query_public_rooms(server, limit=5, since="s1", search=None) == kept
    assert await client.query_public_rooms(server, limit=None, since=None, search="k") == kept
    assert asked[0][:2] == ("GET", {"limit": "5", "since": "s1"})
    assert asked[1] == (
        "POST",
        {"limit": "", "since": ""},
        {"filter": {"generic_search_term": "k"}},
    )


async def test_another_server_reads_a_network_s_list_as_asked(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    registration = tmp_path / "bridge.yaml"
    registration.write_text(
        "id: bridge\nurl: null\nas_token: as-bridge\nhs_token: hs-bridge\n"
        "sender_localpart: _bridge\nnamespaces: {}\nprotocols: [irc]\n"
    )
    config = msgspec.structs.replace(
        config_for_tests(tmp_path / "a", federation=pki),
        app_service_config_files=(registration,),
    )
    async with (
        open_test_homeserver(tmp_path / "a", config=config) as a,
        open_test_homeserver(tmp_path / "b", federation=pki) as b,
    ):
        alice = (await a.register_user("alice")).user_id
        main = await a.server.create_room(alice, preset="public_chat", name="Main")
        bridged = await a.server.create_room(alice, preset="public_chat", name="Bridged")
        await a.server.room_list.set_visibility(alice, main, "public")
        async with a.client(None) as http:
            published = await http.put(
                f"/_matrix/client/v3/directory/list/appservice/libera/{bridged}",
                json={"visibility": "public"},
                headers={"Authorization": "Bearer as-bridge"},
            )
            assert published.status_code == 200, published.text
        instance = "bridge|libera"
        bob = await b.register_user("bob")
        asked = {"server": a.server_name}

        async with b.client(bob, verify=pki.client_context()) as http:

            async def listed(**body: Any) -> list[str]:
                posted = (await http.post(_PUBLIC_ROOMS, params=asked, json=body)).json()
                query = {key: "true" if value is True else value for key, value in body.items()}
                got = (await http.get(_PUBLIC_ROOMS, params={**asked, **query})).json()
                assert _ids(posted) == _ids(got)
                return _ids(posted)

            assert await listed() == [main]
            assert await listed(third_party_instance_id=instance) == [bridged]
            assert await listed(third_party_instance_id="bridge|oftc") == []
            assert sorted(await listed(include_all_networks=True)) == sorted([main, bridged])
            # With a search term, the list is asked for with POST.
            searched = await http.post(
                _PUBLIC_ROOMS,
                params=asked,
                json={"third_party_instance_id": instance, "filter": {"generic_search_term": "br"}},
            )
            assert _ids(searched.json()) == [bridged]

        # The federation routes themselves.
        client = b.server.federation_client
        by_query = await client.get_json(
            a.server_name, PUBLIC_ROOMS_PATH, query={"third_party_instance_id": instance}
        )
        assert _ids(by_query) == [bridged]
        by_body = await client.post_json(
            a.server_name, PUBLIC_ROOMS_PATH, {"third_party_instance_id": instance}
        )
        assert _ids(by_body) == [bridged]
        everything = await client.post_json(
            a.server_name, PUBLIC_ROOMS_PATH, {"include_all_networks": True}
        )
        assert sorted(_ids(everything)) == sorted([main, bridged])
        assert _ids(await client.post_json(a.server_name, PUBLIC_ROOMS_PATH, {})) == [main]
        with pytest.raises(FederationRequestError) as caught:
            await client.post_json(a.server_name, PUBLIC_ROOMS_PATH, {"third_party_instance_id": 5})
        assert (caught.value.status, caught.value.errcode) == (400, "M_BAD_JSON")
