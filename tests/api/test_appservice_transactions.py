"""The server calling an application service over real HTTP: events that
concern it in transactions, retried unchanged while it is down, neither
repeated nor skipped across a restart, events from another server too;
the ping; queries about unknown aliases and users of its namespaces."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import trio
from _appservices import (
    AS_TOKEN,
    HS_TOKEN,
    WithService,
    open_with_service,
    open_with_service_and_peer,
    registration_yaml,
)
from _client import Client, q
from _federation import eventually

from ranvier.testing.appservice import FakeAppService, Transaction
from ranvier.testing.homeserver import config_for_tests, open_test_homeserver
from ranvier.testing.network import free_port


@asynccontextmanager
async def _with_fake(
    tmp_path: Path, **kw: Any
) -> AsyncIterator[tuple[WithService, FakeAppService]]:
    service = FakeAppService(hs_token=HS_TOKEN)
    async with trio.open_nursery() as nursery:
        url = await service.start(nursery)
        async with open_with_service(tmp_path, url=url, **kw) as env:
            yield env, service
        nursery.cancel_scope.cancel()


async def _transaction(service: FakeAppService, after: int) -> Transaction:
    with trio.fail_after(20):
        return await service.next_transaction(after)


async def _send(env: WithService, room_id: str, body: str, txn: str) -> str:
    answer = await env.client.ok(
        env.alice,
        "PUT",
        f"/rooms/{q(room_id)}/send/m.room.message/{txn}",
        {"msgtype": "m.text", "body": body},
    )
    event_id: str = answer["event_id"]
    return event_id


async def _bridged_room(env: WithService) -> tuple[str, str]:
    """A public room of Alice's that a registered ghost of the bridge joined."""
    room_id = await env.client.create_room(env.alice, preset="public_chat")
    ghost = await env.register("_br_ghost")
    await env.as_ok("POST", f"/rooms/{q(room_id)}/join", {}, user_id=ghost)
    return room_id, ghost


def _ids(service: FakeAppService) -> list[str]:
    return [event["event_id"] for event in service.events()]


async def test_the_sender_is_made_at_start(tmp_path: Path) -> None:
    async with open_with_service(tmp_path) as env:
        assert await env.hs.server.accounts.user_exists(env.sender)


async def test_a_message_in_a_room_with_a_namespace_user_reaches_the_service(
    tmp_path: Path,
) -> None:
    async with _with_fake(tmp_path) as (env, service):
        room_id, ghost = await _bridged_room(env)
        elsewhere = await env.client.create_room(env.alice, preset="private_chat")
        quiet = await _send(env, elsewhere, "nothing to do with the bridge", "q1")
        message = await _send(env, room_id, "hello bridge", "m1")

        with trio.fail_after(20):
            await service.wait_for(lambda: message in _ids(service))
        events = {event["event_id"]: event for event in service.events()}
        assert quiet not in events
        assert all(event["room_id"] == room_id for event in events.values())
        sent = events[message]
        assert sent["sender"] == env.alice.user_id
        assert sent["content"] == {"msgtype": "m.text", "body": "hello bridge"}
        assert sent["type"] == "m.room.message"
        # Client format: no PDU fields.
        assert "auth_events" not in sent
        assert "hashes" not in sent
        joins = [
            event
            for event in service.events()
            if event["type"] == "m.room.member" and event["state_key"] == ghost
        ]
        assert joins
        assert joins[0]["content"]["membership"] == "join"
        # Transaction IDs differ from one to the next.
        txn_ids = [transaction.txn_id for transaction in service.transactions]
        assert len(set(txn_ids)) == len(txn_ids)


async def test_state_events_say_what_they_replaced(tmp_path: Path) -> None:
    async with _with_fake(tmp_path) as (env, service):
        room_id, ghost = await _bridged_room(env)
        renamed = await env.as_ok(
            "PUT",
            f"/rooms/{q(room_id)}/state/m.room.member/{q(ghost)}",
            {"membership": "join", "displayname": "Ghost"},
            user_id=ghost,
        )
        message = await _send(env, room_id, "after the rename", "r1")
        with trio.fail_after(20):
            await service.wait_for(lambda: message in _ids(service))
        events = {event["event_id"]: event for event in service.events()}
        (first_join,) = [
            event
            for event in events.values()
            if event.get("state_key") == ghost and event["event_id"] != renamed["event_id"]
        ]
        rename = events[renamed["event_id"]]
        assert rename["unsigned"]["replaces_state"] == first_join["event_id"]
        assert rename["unsigned"]["prev_content"] == first_join["content"]
        assert "prev_content" not in first_join.get("unsigned", {})
        assert "replaces_state" not in events[message].get("unsigned", {})


async def test_a_room_in_the_rooms_namespace_and_an_invite(tmp_path: Path) -> None:
    async with _with_fake(tmp_path) as (env, service):
        room_id = await env.client.create_room(env.alice, preset="private_chat")
        ghost = await env.register("_br_invitee")
        invite = await env.client.ok(
            env.alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": ghost}
        )
        assert invite == {}
        message = await _send(env, room_id, "for the invitee too", "i1")
        with trio.fail_after(20):
            await service.wait_for(lambda: message in _ids(service))
        invites = [
            event
            for event in service.events()
            if event["type"] == "m.room.member" and event.get("state_key") == ghost
        ]
        assert [event["content"]["membership"] for event in invites] == ["invite"]


async def test_a_service_down_gets_the_same_transaction_again(tmp_path: Path) -> None:
    async with _with_fake(tmp_path) as (env, service):
        room_id, _ = await _bridged_room(env)
        first = await _send(env, room_id, "first", "d0")
        with trio.fail_after(20):
            # Sent last, so everything before it was answered too.
            await service.wait_for(lambda: first in _ids(service))
        delivered = len(service.transactions)
        service.status = 503
        message = await _send(env, room_id, "while down", "d1")
        with trio.fail_after(20):
            await service.wait_for(lambda: len(service.attempts) >= delivered + 2)
        failed = service.attempts[delivered:]
        assert len(set(failed)) == 1
        service.status = 200
        retried = await _transaction(service, delivered)
        assert retried.txn_id == failed[0]
        assert message in [event["event_id"] for event in retried.events]


async def test_a_restart_repeats_nothing_answered_and_skips_nothing(tmp_path: Path) -> None:
    service = FakeAppService(hs_token=HS_TOKEN)
    async with trio.open_nursery() as nursery:
        url = await service.start(nursery)
        registration = tmp_path / "bridge.yaml"
        registration.write_text(registration_yaml(url), encoding="utf-8")
        config = msgspec.structs.replace(
            config_for_tests(tmp_path / "hs"), app_service_config_files=(registration,)
        )

        async with open_test_homeserver(tmp_path / "hs", config=config) as hs, hs.client() as h:
            env = WithService(hs, Client(hs, h), await hs.register_user("alice"))
            room_id, _ = await _bridged_room(env)
            answered = await _send(env, room_id, "answered", "r1")
            with trio.fail_after(20):
                await service.wait_for(lambda: answered in _ids(service))
            service.status = 503
            unanswered = await _send(env, room_id, "unanswered", "r2")
            with trio.fail_after(20):
                await service.wait_for(lambda: bool(service.attempts[len(service.transactions) :]))
            alice = env.alice
        before = list(service.transactions)
        pending_id = service.attempts[-1]
        service.status = 200

        async with open_test_homeserver(tmp_path / "hs", config=config) as hs, hs.client() as h:
            env = WithService(hs, Client(hs, h), alice)
            later = await _send(env, room_id, "after the restart", "r3")
            with trio.fail_after(20):
                await service.wait_for(lambda: later in _ids(service))
        nursery.cancel_scope.cancel()

    after = service.transactions[len(before) :]
    assert after[0].txn_id == pending_id
    assert unanswered in [event["event_id"] for event in after[0].events]
    sent_after = [event["event_id"] for transaction in after for event in transaction.events]
    assert answered not in sent_after
    assert sent_after.count(unanswered) == 1
    assert later in sent_after
    txn_ids = [transaction.txn_id for transaction in service.transactions]
    assert len(set(txn_ids)) == len(txn_ids)


async def test_an_event_from_another_server_reaches_the_service(tmp_path: Path) -> None:
    service = FakeAppService(hs_token=HS_TOKEN)
    async with trio.open_nursery() as nursery:
        url = await service.start(nursery)
        async with open_with_service_and_peer(tmp_path, url=url) as (env, b, cb):
            bob = await b.register_user("bob")
            room_id, _ = await _bridged_room(env)
            await cb.ok(
                bob, "POST", f"/join/{q(room_id)}", {}, params={"server_name": env.hs.server_name}
            )
            with trio.fail_after(20):
                await b.server.wait_for_full_state(room_id)
            sent = await cb.ok(
                bob,
                "PUT",
                f"/rooms/{q(room_id)}/send/m.room.message/f1",
                {"msgtype": "m.text", "body": "from afar"},
            )

            async def arrived() -> bool:
                return sent["event_id"] in _ids(service)

            await eventually(arrived, "Bob's message at the bridge")
            (event,) = [e for e in service.events() if e["event_id"] == sent["event_id"]]
            assert event["sender"] == bob.user_id
            assert event["content"]["body"] == "from afar"
        nursery.cancel_scope.cancel()


async def test_a_service_without_url_is_sent_nothing(tmp_path: Path) -> None:
    async with open_with_service(tmp_path, url=None) as env:
        room_id, _ = await _bridged_room(env)
        await _send(env, room_id, "nobody listens", "n1")
        assert await env.hs.server.storage.appservices.position("bridge") is None
        assert env.hs.server.appservice_sender.positions == {}


async def test_the_ping(tmp_path: Path) -> None:
    async with _with_fake(tmp_path) as (env, service):
        path = "/_matrix/client/v1/appservice/bridge/ping"
        response = await env.client.http.post(
            path, json={"transaction_id": "meow"}, headers={"Authorization": f"Bearer {AS_TOKEN}"}
        )
        assert response.status_code == 200, response.text
        assert isinstance(response.json()["duration_ms"], int)
        assert service.queries == [("ping", "meow")]

        service.ping_status = 403
        response = await env.client.http.post(
            path, json={}, headers={"Authorization": f"Bearer {AS_TOKEN}"}
        )
        assert response.status_code == 502
        answer = response.json()
        assert (answer["errcode"], answer["status"]) == ("M_BAD_STATUS", 403)
        assert answer["body"] == "{}"

        # Only the service's own as_token may ping it.
        for token, status in ((env.alice.access_token, 403), ("nobody's", 401)):
            response = await env.client.http.post(
                path, json={}, headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == status
        response = await env.client.http.post(
            "/_matrix/client/v1/appservice/other/ping",
            json={},
            headers={"Authorization": f"Bearer {AS_TOKEN}"},
        )
        assert (response.status_code, response.json()["errcode"]) == (403, "M_FORBIDDEN")
        assert len(service.queries) == 2


async def test_a_ping_that_cannot_be_made(tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {AS_TOKEN}"}
    path = "/_matrix/client/v1/appservice/bridge/ping"
    async with open_with_service(tmp_path / "down", url=f"http://127.0.0.1:{free_port()}") as env:
        response = await env.client.http.post(path, json={}, headers=headers)
        assert (response.status_code, response.json()["errcode"]) == (502, "M_CONNECTION_FAILED")
    async with open_with_service(tmp_path / "none", url=None) as env:
        response = await env.client.http.post(path, json={}, headers=headers)
        assert (response.status_code, response.json()["errcode"]) == (400, "M_URL_NOT_SET")


async def test_an_unknown_alias_is_asked_of_the_service(tmp_path: Path) -> None:
    async with _with_fake(tmp_path) as (env, service):
        alias = f"#_br_made:{env.hs.server_name}"
        made: list[str] = []

        async def make_alias(queried: str) -> bool:
            # What a bridge does: make the room and point the alias at it.
            answer = await env.as_ok("POST", "/createRoom", {"preset": "public_chat"})
            await env.as_ok("PUT", f"/directory/room/{q(queried)}", {"room_id": answer["room_id"]})
            made.append(answer["room_id"])
            return True

        service.on_alias = make_alias
        resolved = await env.client.ok(env.alice, "GET", f"/directory/room/{q(alias)}")
        assert resolved["room_id"] == made[0]
        assert service.queries == [("rooms", alias)]
        # Known now: not asked again.
        await env.client.ok(env.alice, "GET", f"/directory/room/{q(alias)}")
        assert service.queries == [("rooms", alias)]
        # Outside the namespace nobody is asked; the service may also say no.
        await env.client.refused(
            env.alice,
            "GET",
            f"/directory/room/{q('#plain:' + env.hs.server_name)}",
            status=404,
            errcode="M_NOT_FOUND",
        )
        service.on_alias = None
        missing = f"#_br_missing:{env.hs.server_name}"
        await env.client.refused(
            env.alice, "GET", f"/directory/room/{q(missing)}", status=404, errcode="M_NOT_FOUND"
        )
        assert service.queries == [("rooms", alias), ("rooms", missing)]


async def test_an_invite_of_an_unknown_user_asks_the_service_first(tmp_path: Path) -> None:
    async with _with_fake(tmp_path) as (env, service):
        ghost = env.user("_br_invited")
        made: list[str] = []

        async def make_user(queried: str) -> bool:
            await env.register(queried[1:].partition(":")[0])
            made.append(queried)
            return True

        service.on_user = make_user
        room_id = await env.client.create_room(env.alice, preset="private_chat")
        await env.client.ok(env.alice, "POST", f"/rooms/{q(room_id)}/invite", {"user_id": ghost})
        assert service.queries == [("users", ghost)]
        assert made == [ghost]
        # The user the service made takes the invite.
        await env.as_ok("POST", f"/rooms/{q(room_id)}/join", {}, user_id=ghost)
        # A user who exists, or one outside every namespace, is not asked about.
        other = await env.client.create_room(env.alice, preset="private_chat")
        await env.client.ok(env.alice, "POST", f"/rooms/{q(other)}/invite", {"user_id": ghost})
        await env.client.ok(
            env.alice, "POST", f"/rooms/{q(other)}/invite", {"user_id": env.user("plain")}
        )
        assert service.queries == [("users", ghost)]


async def test_an_unknown_user_is_asked_of_the_service(tmp_path: Path) -> None:
    async with _with_fake(tmp_path) as (env, service):
        ghost = env.user("_br_on_demand")

        async def make_user(queried: str) -> bool:
            await env.register(queried[1:].partition(":")[0])
            await env.as_ok(
                "PUT",
                f"/profile/{q(queried)}/displayname",
                {"displayname": "Made"},
                user_id=queried,
            )
            return True

        service.on_user = make_user
        profile = await env.client.ok(env.alice, "GET", f"/profile/{q(ghost)}")
        assert profile == {"displayname": "Made"}
        assert service.queries == [("users", ghost)]
        await env.client.refused(
            env.alice,
            "GET",
            f"/profile/{q(env.user('nobody'))}",
            status=404,
            errcode="M_NOT_FOUND",
        )
        assert service.queries == [("users", ghost)]


async def test_joining_by_an_unknown_alias_asks_the_service_and_its_room_concerns_it(
    tmp_path: Path,
) -> None:
    async with _with_fake(tmp_path) as (env, service):
        bob = await env.hs.register_user("bob")
        # A room of Alice's, with nobody of the bridge in it.
        room_id = await env.client.create_room(env.alice, preset="public_chat")
        alias = f"#_br_portal:{env.hs.server_name}"

        async def point_alias(queried: str) -> bool:
            await env.as_ok("PUT", f"/directory/room/{q(queried)}", {"room_id": room_id})
            return True

        service.on_alias = point_alias
        joined = await env.client.ok(bob, "POST", f"/join/{q(alias)}", {})
        assert joined["room_id"] == room_id
        assert service.queries == [("rooms", alias)]
        # The alias in its namespace makes the room the service's concern:
        # Bob's join and what is said after reach it.
        message = await _send(env, room_id, "through the portal", "p1")
        with trio.fail_after(20):
            await service.wait_for(lambda: message in _ids(service))
        bob_joins = [
            event
            for event in service.events()
            if event["type"] == "m.room.member" and event["state_key"] == bob.user_id
        ]
        assert [event["content"]["membership"] for event in bob_joins] == ["join"]
