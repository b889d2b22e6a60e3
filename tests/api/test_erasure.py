"""Erasure over real HTTP: a user who deactivates with ``erase`` has their
messages served redacted to a user who joins the room after, on ``/sync``,
``/messages``, ``/context``, ``/event``, in thread summaries and in
search, while a user joined when they were sent still reads them whole.
Deactivating without ``erase`` changes nothing of it; the admin API's
deactivation erases as the user's own does, and reactivating takes it back.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _admin import admin_ok, admin_refused
from _client import Client, q

from ranvier.testing.homeserver import TestHomeserver, TestUser, open_test_homeserver

PASSWORD = "erins password"
_FILTER = json.dumps({"room": {"timeline": {"limit": 50}}})


@dataclass
class Room:
    """Alice's public room, where Erin said two things and started a
    thread while Bob was in the room; Carol is of the server but not in
    it yet."""

    hs: TestHomeserver
    client: Client
    alice: TestUser
    bob: TestUser
    carol: TestUser
    erin: TestUser
    admin: TestUser
    room_id: str
    #: Erin's messages, by event ID: the thread's root first, then its reply.
    said: dict[str, str]
    reply_id: str

    async def deactivate_erin(self, **body: Any) -> None:
        c, erin = self.client, self.erin
        status, challenge = await c.call(erin, "POST", "/account/deactivate", body)
        assert status == 401, challenge
        auth = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "erin"},
            "password": PASSWORD,
            "session": challenge["session"],
        }
        await c.ok(erin, "POST", "/account/deactivate", {**body, "auth": auth})

    async def carol_joins(self) -> None:
        await self.client.ok(self.carol, "POST", f"/rooms/{q(self.room_id)}/join", {})

    async def admin_erase(self) -> dict[str, Any]:
        answer: dict[str, Any] = await admin_ok(
            self.client.http,
            self.admin,
            "POST",
            f"/v1/deactivate/{q(self.erin.user_id)}",
            {"erase": True},
        )
        return answer

    async def shown_erased(self) -> bool:
        user: dict[str, Any] = await admin_ok(
            self.client.http, self.admin, "GET", f"/v2/users/{q(self.erin.user_id)}"
        )
        erased = user["erased"]
        assert isinstance(erased, bool)
        return erased

    async def messages(self, reader: TestUser) -> dict[str, dict[str, Any]]:
        """Erin's messages on ``reader``'s ``/messages``, by event ID."""
        page = await self.client.ok(
            reader,
            "GET",
            f"/rooms/{q(self.room_id)}/messages",
            params={"dir": "b", "limit": 50},
        )
        return self._erins(page["chunk"])

    async def timeline(self, reader: TestUser) -> dict[str, dict[str, Any]]:
        """Erin's messages on ``reader``'s initial ``/sync``, by event ID."""
        synced = await self.client.ok(reader, "GET", "/sync", params={"filter": _FILTER})
        room = synced["rooms"]["join"][self.room_id]
        return self._erins(room["timeline"]["events"])

    async def event(self, reader: TestUser, event_id: str) -> dict[str, Any]:
        path = f"/rooms/{q(self.room_id)}/event/{q(event_id)}"
        answer: dict[str, Any] = await self.client.ok(reader, "GET", path)
        return answer

    async def context(self, reader: TestUser, event_id: str) -> dict[str, Any]:
        path = f"/rooms/{q(self.room_id)}/context/{q(event_id)}"
        answer: dict[str, Any] = await self.client.ok(reader, "GET", path, params={"limit": 10})
        return answer

    async def found(self, reader: TestUser, term: str) -> list[str]:
        """The event IDs ``reader``'s search for ``term`` finds."""
        body = {"search_categories": {"room_events": {"search_term": term}}}
        answer = await self.client.ok(reader, "POST", "/search", body)
        results = answer["search_categories"]["room_events"]["results"]
        return sorted(result["result"]["event_id"] for result in results)

    def _erins(self, events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {
            event["event_id"]: event
            for event in events
            if event["sender"] == self.erin.user_id and event["type"] == "m.room.message"
        }


def _whole(room: Room, events: dict[str, dict[str, Any]]) -> None:
    """``events`` are all Erin's messages, as she sent them."""
    assert {event_id: event["content"]["body"] for event_id, event in events.items()} == {
        **room.said,
        room.reply_id: "secret reply",
    }


def _redacted(room: Room, events: dict[str, dict[str, Any]]) -> None:
    """``events`` are all Erin's messages, redacted: no content left, and no
    redaction to name, since none was sent."""
    assert set(events) == {*room.said, room.reply_id}
    for event in events.values():
        _redacted_event(event)


def _redacted_event(event: dict[str, Any]) -> None:
    assert event["content"] == {}
    assert event["type"] == "m.room.message"
    assert "redacted_because" not in event.get("unsigned", {})


@pytest.fixture
async def room(tmp_path: Path) -> AsyncIterator[Room]:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client() as http:
        c = Client(hs, http)
        alice = await hs.register_user("alice")
        bob = await hs.register_user("bob")
        carol = await hs.register_user("carol")
        erin = await hs.register_user("erin", PASSWORD)
        admin = await hs.register_user("admin", admin=True)
        room_id = await c.create_room(alice, preset="public_chat")
        for user in (bob, erin):
            await c.ok(user, "POST", f"/rooms/{q(room_id)}/join", {})
        said: dict[str, str] = {}
        for number, body in enumerate(["first secret", "second secret"]):
            sent = await c.ok(
                erin,
                "PUT",
                f"/rooms/{q(room_id)}/send/m.room.message/{number}",
                {"msgtype": "m.text", "body": body},
            )
            said[sent["event_id"]] = body
        root = next(iter(said))
        reply = await c.ok(
            erin,
            "PUT",
            f"/rooms/{q(room_id)}/send/m.room.message/reply",
            {
                "msgtype": "m.text",
                "body": "secret reply",
                "m.relates_to": {"rel_type": "m.thread", "event_id": root},
            },
        )
        yield Room(hs, c, alice, bob, carol, erin, admin, room_id, said, reply["event_id"])


async def test_a_user_joining_after_the_erasure_is_served_the_messages_redacted(
    room: Room,
) -> None:
    await room.deactivate_erin(erase=True)
    await room.carol_joins()
    root, second = room.said

    _redacted(room, await room.messages(room.carol))
    _redacted(room, await room.timeline(room.carol))
    for event_id in room.said:
        event = await room.event(room.carol, event_id)
        _redacted_event(event)
        # Carol was not in the room then, and the answer still says so.
        assert event["unsigned"]["membership"] == "leave"
    context = await room.context(room.carol, second)
    _redacted_event(context["event"])
    around = room._erins([*context["events_before"], *context["events_after"]])
    assert set(around) == {root, room.reply_id}
    for event in around.values():
        _redacted_event(event)
    # The thread's summary on its root names its newest reply, redacted too.
    thread = (await room.event(room.carol, root))["unsigned"]["m.relations"]["m.thread"]
    assert thread["latest_event"]["event_id"] == room.reply_id
    _redacted_event(thread["latest_event"])
    # What she may not read, she does not find either.
    assert await room.found(room.carol, "secret") == []

    # Bob was in the room when Erin spoke: he still reads every word.
    _whole(room, await room.messages(room.bob))
    _whole(room, await room.timeline(room.bob))
    for event_id, body in room.said.items():
        event = await room.event(room.bob, event_id)
        assert event["content"]["body"] == body
        assert event["unsigned"]["membership"] == "join"
    context = await room.context(room.bob, second)
    assert context["event"]["content"]["body"] == "second secret"
    thread = (await room.event(room.bob, root))["unsigned"]["m.relations"]["m.thread"]
    assert thread["latest_event"]["content"]["body"] == "secret reply"
    assert await room.found(room.bob, "secret") == sorted([*room.said, room.reply_id])
    assert await room.shown_erased()


async def test_deactivating_without_erase_hides_nothing(room: Room) -> None:
    await room.deactivate_erin(erase=False)
    await room.carol_joins()
    _whole(room, await room.messages(room.carol))
    _whole(room, await room.timeline(room.carol))
    for event_id, body in room.said.items():
        assert (await room.event(room.carol, event_id))["content"]["body"] == body
    assert await room.found(room.carol, "secret") == sorted([*room.said, room.reply_id])
    assert not await room.shown_erased()


async def test_the_admin_api_erases_as_the_users_own_deactivation_does(room: Room) -> None:
    answer = await room.admin_erase()
    assert answer == {"id_server_unbind_result": "success"}
    assert await room.shown_erased()
    await room.carol_joins()
    _redacted(room, await room.messages(room.carol))
    _whole(room, await room.messages(room.bob))


async def test_the_admin_api_erases_an_account_deactivated_already(room: Room) -> None:
    await room.deactivate_erin()
    await room.carol_joins()
    _whole(room, await room.messages(room.carol))
    await admin_refused(
        room.client.http,
        room.admin,
        "POST",
        f"/v1/deactivate/{q(room.erin.user_id)}",
        {"erase": "yes"},
        status=400,
        errcode="M_BAD_JSON",
    )
    assert not await room.shown_erased()

    await room.admin_erase()
    assert await room.shown_erased()
    _redacted(room, await room.messages(room.carol))

    # Brought back, the account is served as any other again.
    path = f"/v2/users/{q(room.erin.user_id)}"
    back = await admin_ok(
        room.client.http, room.admin, "PUT", path, {"deactivated": False, "password": "again"}
    )
    assert (back["deactivated"], back["erased"]) == (False, False)
    _whole(room, await room.messages(room.carol))
