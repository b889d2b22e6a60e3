"""A room shut (and purged) by an admin while another server's user is in
it: that server sees this server's users leave, and its user stays; asked
about the purged room, this server answers as about one it never had."""

from __future__ import annotations

from pathlib import Path

from _admin import admin_ok
from _client import q
from _federation import eventually, share_a_room, two_servers

from ranvier.federation.transport.client import FederationRequestError
from ranvier.testing.homeserver import TestHomeserver

_V1 = "/_matrix/federation/v1"


async def test_another_server_sees_the_local_users_leave(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        a, _b, ca, cb, alice, bob = servers
        room_id = await share_a_room(servers)
        dave = await a.register_user("dave")
        await ca.ok(dave, "POST", f"/rooms/{q(room_id)}/join", {})
        admin = await a.register_user("root", admin=True)

        async def joined_at_b() -> set[str]:
            members = await cb.ok(bob, "GET", f"/rooms/{q(room_id)}/joined_members")
            return set(members["joined"])

        async def dave_at_b() -> bool:
            return dave.user_id in await joined_at_b()

        await eventually(dave_at_b, "Dave's join at B")

        answer = await admin_ok(
            ca.http, admin, "DELETE", f"/v2/rooms/{q(room_id)}", {"block": True}
        )
        status = await admin_ok(
            ca.http, admin, "GET", f"/v2/rooms/delete_status/{answer['delete_id']}"
        )
        assert sorted(status["shutdown_room"]["kicked_users"]) == sorted(
            [alice.user_id, dave.user_id]
        )

        async def only_bob_at_b() -> bool:
            return await joined_at_b() == {bob.user_id}

        await eventually(only_bob_at_b, "A's users leaving, seen at B")
        state = await cb.state(bob, room_id)
        for user in (alice, dave):
            assert state[("m.room.member", user.user_id)]["content"]["membership"] == "leave"
        await ca.refused(
            alice, "POST", f"/rooms/{q(room_id)}/join", {}, status=403, errcode="M_FORBIDDEN"
        )


async def _answer(server: TestHomeserver, destination: str, path: str) -> tuple[int, str | None]:
    """The status and errcode ``server`` is answered over federation."""
    try:
        await server.server.federation_client.get_json(destination, path)
    except FederationRequestError as exc:
        return exc.status, exc.errcode
    return 200, None


async def test_a_purged_room_is_unknown_to_other_servers_asking(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        a, b, ca, cb, alice, bob = servers
        room_id = await share_a_room(servers)
        sent = await ca.ok(
            alice,
            "PUT",
            f"/rooms/{q(room_id)}/send/m.room.message/t1",
            {"msgtype": "m.text", "body": "to be purged"},
        )
        event_id = sent["event_id"]
        admin = await a.register_user("root", admin=True)
        paths = {
            "event": (f"/event/{q(event_id)}", f"/event/{q('$never:' + a.server_name)}"),
            "state_ids": (
                f"/state_ids/{q(room_id)}?event_id={q(event_id)}",
                f"/state_ids/{q('!never:' + a.server_name)}?event_id={q(event_id)}",
            ),
        }
        before = await _answer(b, a.server_name, _V1 + paths["event"][0])
        assert before == (200, None)

        answer = await admin_ok(ca.http, admin, "DELETE", f"/v2/rooms/{q(room_id)}", {})
        status = await admin_ok(
            ca.http, admin, "GET", f"/v2/rooms/delete_status/{answer['delete_id']}"
        )
        assert status["status"] == "complete"

        # B still hears Alice leave: the leave was handed to its queue
        # before the purge.
        async def alice_gone_at_b() -> bool:
            members = await cb.ok(bob, "GET", f"/rooms/{q(room_id)}/joined_members")
            return set(members["joined"]) == {bob.user_id}

        await eventually(alice_gone_at_b, "Alice's leave at B")
        # A answers about the room and its event as about ones it never had.
        for purged, never in paths.values():
            got = await _answer(b, a.server_name, _V1 + purged)
            assert got == await _answer(b, a.server_name, _V1 + never)
            assert got[0] in (403, 404)
        # And B's Bob carries on in the room, on B.
        await cb.ok(
            bob,
            "PUT",
            f"/rooms/{q(room_id)}/send/m.room.message/t2",
            {"msgtype": "m.text", "body": "still here"},
        )
