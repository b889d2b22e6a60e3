"""``POST /search`` over real HTTP on started homeservers: finding messages,
names and topics by their words, rank and recent order, paging with
``next_batch`` to the end, filters and keys, context with profiles, state
and groups, rooms not joined and history not visible left out, redacted
messages not found, FTS5 syntax in the search term taken as words, an
event received over federation found, and bad requests refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _client import SharedRoom, open_shared_room, q
from _federation import eventually, share_a_room, two_servers

from ranvier.testing.homeserver import TestUser


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[SharedRoom]:
    async with open_shared_room(tmp_path, SharedRoom) as shared:
        yield shared


_txn = iter(range(1_000_000))


async def _say(env: SharedRoom, user: TestUser, body: str, room_id: str | None = None) -> str:
    room = room_id or env.room_id
    answer = await env.client.ok(
        user,
        "PUT",
        f"/rooms/{q(room)}/send/m.room.message/t{next(_txn)}",
        {"msgtype": "m.text", "body": body},
    )
    event_id: str = answer["event_id"]
    return event_id


async def _search(
    env: SharedRoom, user: TestUser, term: str, next_batch: str | None = None, **criteria: Any
) -> dict[str, Any]:
    params = None if next_batch is None else {"next_batch": next_batch}
    answer = await env.client.ok(
        user,
        "POST",
        "/search",
        {"search_categories": {"room_events": {"search_term": term, **criteria}}},
        params=params,
    )
    found: dict[str, Any] = answer["search_categories"]["room_events"]
    return found


def _ids(found: dict[str, Any]) -> list[str]:
    return [result["result"]["event_id"] for result in found["results"]]


async def test_messages_names_and_topics_are_found_by_their_words(env: SharedRoom) -> None:
    hit = await _say(env, env.alice, "The Martians landed near the lake")
    await _say(env, env.bob, "nothing to see here")
    accented = await _say(env, env.bob, "Café on Mars")
    name = (
        await env.client.ok(
            env.alice,
            "PUT",
            f"/rooms/{q(env.room_id)}/state/m.room.name",
            {"name": "Martian watchers"},
        )
    )["event_id"]

    found = await _search(env, env.bob, "martian", order_by="recent")
    assert _ids(found) == [name, hit]
    assert found["count"] == 2
    assert found["highlights"] == ["martian", "martians"]
    (result, _) = found["results"]
    assert result["result"]["content"] == {"name": "Martian watchers"}
    assert result["result"]["type"] == "m.room.name"
    assert result["result"]["room_id"] == env.room_id
    assert isinstance(result["rank"], float)
    assert "next_batch" not in found

    # Every word must match, case and accents aside.
    assert _ids(await _search(env, env.bob, "LAKE martians")) == [hit]
    assert _ids(await _search(env, env.bob, "lake venus")) == []
    assert _ids(await _search(env, env.bob, "cafe")) == [accented]
    only_bodies = await _search(env, env.bob, "martian", keys=["content.body"])
    assert _ids(only_bodies) == [hit]


async def test_the_sender_gets_the_transaction_id_as_in_messages(env: SharedRoom) -> None:
    await env.client.ok(
        env.alice,
        "PUT",
        f"/rooms/{q(env.room_id)}/send/m.room.message/mine",
        {"msgtype": "m.text", "body": "martians"},
    )

    own = await _search(env, env.alice, "martians")
    other = await _search(env, env.bob, "martians")

    assert own["results"][0]["result"]["unsigned"]["transaction_id"] == "mine"
    assert "transaction_id" not in other["results"][0]["result"].get("unsigned", {})


async def test_rank_puts_closer_matches_first_and_recent_the_newest(env: SharedRoom) -> None:
    loose = await _say(env, env.alice, "martians " + "and other words " * 10)
    close = await _say(env, env.alice, "martians martians martians")
    newest = await _say(env, env.alice, "we spoke of martians and of many more things")

    ranked = await _search(env, env.bob, "martians", order_by="rank")
    recent = await _search(env, env.bob, "martians", order_by="recent")
    default = await _search(env, env.bob, "martians")

    assert _ids(ranked)[0] == close
    assert _ids(ranked)[-1] == loose
    ranks = [result["rank"] for result in ranked["results"]]
    assert ranks == sorted(ranks, reverse=True)
    assert _ids(recent) == [newest, close, loose]
    assert _ids(default) == _ids(ranked)


@pytest.mark.parametrize("order_by", ["recent", "rank"])
async def test_next_batch_pages_to_the_end(env: SharedRoom, order_by: str) -> None:
    sent = [await _say(env, env.alice, f"martians number {n}") for n in range(5)]
    await _say(env, env.alice, "unrelated")

    pages = []
    found = await _search(env, env.bob, "martians", order_by=order_by, filter={"limit": 2})
    pages.append(_ids(found))
    while "next_batch" in found:
        assert len(pages) < 10
        found = await _search(
            env,
            env.bob,
            "martians",
            found["next_batch"],
            order_by=order_by,
            filter={"limit": 2},
        )
        pages.append(_ids(found))
        assert found["count"] == 5

    seen = [event_id for page in pages for event_id in page]
    assert [len(page) for page in pages[:3]] == [2, 2, 1]
    assert sorted(seen) == sorted(sent)
    if order_by == "recent":
        assert seen == list(reversed(sent))


async def test_filters_pick_rooms_senders_and_types(env: SharedRoom) -> None:
    other_room = await env.client.create_room(env.bob, preset="public_chat")
    in_shared_by_alice = await _say(env, env.alice, "martians")
    in_shared_by_bob = await _say(env, env.bob, "martians")
    in_other = await _say(env, env.bob, "martians", room_id=other_room)

    everywhere = await _search(env, env.bob, "martians", order_by="recent")
    only_other = await _search(env, env.bob, "martians", filter={"rooms": [other_room]})
    not_other = await _search(
        env, env.bob, "martians", order_by="recent", filter={"not_rooms": [other_room]}
    )
    from_alice = await _search(env, env.bob, "martians", filter={"senders": [env.alice.user_id]})
    not_messages = await _search(env, env.bob, "martians", filter={"not_types": ["m.room.*"]})

    assert _ids(everywhere) == [in_other, in_shared_by_bob, in_shared_by_alice]
    assert _ids(only_other) == [in_other]
    assert _ids(not_other) == [in_shared_by_bob, in_shared_by_alice]
    assert _ids(from_alice) == [in_shared_by_alice]
    assert _ids(not_messages) == []


async def test_context_gives_the_events_around_and_the_senders_profiles(
    env: SharedRoom,
) -> None:
    await env.client.ok(
        env.bob,
        "PUT",
        f"/rooms/{q(env.room_id)}/state/m.room.member/{q(env.bob.user_id)}",
        {"membership": "join", "displayname": "Bobby", "avatar_url": "mxc://x/bob"},
    )
    before = [await _say(env, env.alice, f"before {n}") for n in range(3)]
    hit = await _say(env, env.bob, "martians")
    after = [await _say(env, env.alice, f"after {n}") for n in range(3)]

    found = await _search(
        env,
        env.bob,
        "martians",
        event_context={"before_limit": 2, "after_limit": 1, "include_profile": True},
    )

    (result,) = found["results"]
    context = result["context"]
    assert result["result"]["event_id"] == hit
    assert [event["event_id"] for event in context["events_before"]] == [before[2], before[1]]
    assert [event["event_id"] for event in context["events_after"]] == [after[0]]
    assert context["profile_info"][env.bob.user_id] == {
        "displayname": "Bobby",
        "avatar_url": "mxc://x/bob",
    }
    assert set(context["profile_info"]) == {env.alice.user_id, env.bob.user_id}
    # The tokens page on with /messages from either end.
    back = await env.client.ok(
        env.bob,
        "GET",
        f"/rooms/{q(env.room_id)}/messages",
        params={"dir": "b", "from": context["start"], "limit": 1},
    )
    assert [event["event_id"] for event in back["chunk"]] == [before[0]]
    onwards = await env.client.ok(
        env.bob,
        "GET",
        f"/rooms/{q(env.room_id)}/messages",
        params={"dir": "f", "from": context["end"], "limit": 1},
    )
    assert [event["event_id"] for event in onwards["chunk"]] == [after[1]]

    plain = await _search(env, env.bob, "martians")
    assert "context" not in plain["results"][0]


async def test_state_and_groups_when_asked(env: SharedRoom) -> None:
    other_room = await env.client.create_room(env.bob, preset="public_chat")
    first = await _say(env, env.alice, "martians")
    second = await _say(env, env.bob, "martians", room_id=other_room)
    third = await _say(env, env.bob, "martians")

    found = await _search(
        env,
        env.bob,
        "martians",
        order_by="recent",
        include_state=True,
        groupings={"group_by": [{"key": "room_id"}, {"key": "sender"}]},
    )

    assert set(found["state"]) == {env.room_id, other_room}
    shared_state = {(event["type"], event["state_key"]) for event in found["state"][env.room_id]}
    assert ("m.room.create", "") in shared_state
    assert ("m.room.member", env.bob.user_id) in shared_state
    assert found["groups"]["room_id"] == {
        env.room_id: {"order": 1, "results": [third, first]},
        other_room: {"order": 2, "results": [second]},
    }
    assert found["groups"]["sender"] == {
        env.bob.user_id: {"order": 1, "results": [third, second]},
        env.alice.user_id: {"order": 2, "results": [first]},
    }


async def test_rooms_not_joined_are_not_searched(env: SharedRoom) -> None:
    await _say(env, env.alice, "martians in the shared room")
    # Carol never joined; a room Bob left is no longer searched by him.
    left_room = await env.client.create_room(env.alice, preset="public_chat")
    await env.client.ok(env.bob, "POST", f"/rooms/{q(left_room)}/join", {})
    await _say(env, env.alice, "martians in the room left", room_id=left_room)
    await env.client.ok(env.bob, "POST", f"/rooms/{q(left_room)}/leave", {})

    for_carol = await _search(env, env.carol, "martians")
    for_bob = await _search(env, env.bob, "martians")
    for_alice = await _search(env, env.alice, "martians")

    assert _ids(for_carol) == []
    assert for_carol["count"] == 0
    assert len(_ids(for_bob)) == 1
    assert {r["result"]["room_id"] for r in for_bob["results"]} == {env.room_id}
    assert len(_ids(for_alice)) == 2


async def test_history_from_before_a_join_is_hidden_under_joined_visibility(
    env: SharedRoom,
) -> None:
    room_id = await env.client.create_room(
        env.alice,
        preset="public_chat",
        initial_state=[
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "joined"},
            }
        ],
    )
    await _say(env, env.alice, "martians said early", room_id=room_id)
    await env.client.ok(env.carol, "POST", f"/rooms/{q(room_id)}/join", {})
    later = await _say(env, env.alice, "martians said later", room_id=room_id)

    for_carol = await _search(env, env.carol, "martians")
    for_alice = await _search(env, env.alice, "martians", filter={"rooms": [room_id]})

    assert _ids(for_carol) == [later]
    assert len(_ids(for_alice)) == 2


async def test_hidden_matches_beyond_a_batch_are_looked_past(env: SharedRoom) -> None:
    room_id = await env.client.create_room(
        env.alice,
        preset="public_chat",
        initial_state=[
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "joined"},
            }
        ],
    )
    # More hidden matches than the index is read for at a time.
    for n in range(55):
        await _say(env, env.alice, f"martians hidden {n}", room_id=room_id)
    await env.client.ok(env.carol, "POST", f"/rooms/{q(room_id)}/join", {})
    shown = [await _say(env, env.alice, f"martians shown {n}", room_id=room_id) for n in range(2)]

    recent = await _search(env, env.carol, "martians", order_by="recent")
    ranked = await _search(env, env.carol, "martians", filter={"limit": 1})
    rest = await _search(env, env.carol, "martians", ranked["next_batch"], filter={"limit": 1})

    assert _ids(recent) == shown[::-1]
    assert recent["count"] == 57
    assert "next_batch" not in recent
    assert sorted(_ids(ranked) + _ids(rest)) == sorted(shown)


async def test_redacted_messages_are_not_found(env: SharedRoom) -> None:
    kept = await _say(env, env.bob, "martians stay")
    gone = await _say(env, env.bob, "martians go")
    assert set(_ids(await _search(env, env.alice, "martians"))) == {kept, gone}

    await env.client.ok(
        env.bob, "PUT", f"/rooms/{q(env.room_id)}/redact/{q(gone)}/r1", {"reason": "oops"}
    )

    found = await _search(env, env.alice, "martians")
    assert _ids(found) == [kept]
    assert found["count"] == 1


async def test_an_upgraded_room_and_its_predecessor_are_searched_together(
    env: SharedRoom,
) -> None:
    c, alice = env.client, env.alice
    old = await c.create_room(alice, preset="private_chat", room_version="10")
    before = await _say(env, alice, "Said before the upgrade", old)
    answer = await c.ok(alice, "POST", f"/rooms/{q(old)}/upgrade", {"new_version": "11"})
    new = answer["replacement_room"]
    after = await _say(env, alice, "Said after the upgrade", new)
    found = await _search(env, alice, "upgrade", filter={"rooms": [old, new]})
    assert found["count"] == 2
    assert sorted(_ids(found)) == sorted([before, after])
    bodies = {r["result"]["room_id"]: r["result"]["content"]["body"] for r in found["results"]}
    assert bodies == {old: "Said before the upgrade", new: "Said after the upgrade"}


@pytest.mark.parametrize(
    ("term", "only_both"),
    [
        ('martians" OR "venus', True),
        ("martians OR venus", True),
        ("NEAR(martians venus)", True),
        ("body:martians", True),
        ("-venus martians", True),
        ("martians*", False),
        ('"martians', False),
        ("^martians", False),
        ("(martians", False),
    ],
)
async def test_fts_syntax_in_the_term_is_taken_as_words(
    env: SharedRoom, term: str, only_both: bool
) -> None:
    both = await _say(env, env.alice, "martians or venus, near the body")
    alone = await _say(env, env.alice, "martians alone")
    await _say(env, env.alice, "venus alone")

    found = await _search(env, env.bob, term, order_by="recent")

    # Every word is required, the operators' and column names' too.
    assert _ids(found) == ([both] if only_both else [alone, both])


async def test_a_term_without_words_finds_nothing(env: SharedRoom) -> None:
    await _say(env, env.alice, "martians")
    for term in ["", "   ", '"*"', "()-:^"]:
        found = await _search(env, env.bob, term)
        assert found == {"results": [], "count": 0, "highlights": []}


async def test_bad_requests_are_refused(env: SharedRoom) -> None:
    client, bob = env.client, env.bob

    async def refused(body: Any, errcode: str = "M_BAD_JSON", **kw: Any) -> None:
        await client.refused(bob, "POST", "/search", body, status=400, errcode=errcode, **kw)

    await refused({})
    await refused({"search_categories": {"room_events": {}}})
    await refused({"search_categories": {"room_events": {"search_term": 5}}})
    criteria = {"search_term": "x"}
    await refused({"search_categories": {"room_events": criteria | {"keys": ["content.url"]}}})
    await refused({"search_categories": {"room_events": criteria | {"order_by": "oldest"}}})
    await refused(
        {"search_categories": {"room_events": criteria | {"event_context": {"before_limit": -1}}}}
    )
    await refused(
        {"search_categories": {"room_events": criteria | {"groupings": {"group_by": [{}]}}}}
    )
    await refused({"search_categories": {"room_events": criteria | {"filter": {"limit": 0}}}})
    await refused([], errcode="M_NOT_JSON")
    body = {"search_categories": {"room_events": criteria | {"order_by": "recent"}}}
    await refused(body, errcode="M_INVALID_PARAM", params={"next_batch": "nonsense"})
    await refused(body, errcode="M_INVALID_PARAM", params={"next_batch": "r5"})
    await client.refused(None, "POST", "/search", body, status=401, errcode="M_MISSING_TOKEN")

    unknown = await client.ok(bob, "POST", "/search", {"search_categories": {"people": {}}})
    assert unknown == {"search_categories": {}}


async def test_an_event_received_over_federation_is_found(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        _, _, ca, cb, alice, bob = servers
        room_id = await share_a_room(servers)
        sent = (
            await cb.ok(
                bob,
                "PUT",
                f"/rooms/{q(room_id)}/send/m.room.message/t1",
                {"msgtype": "m.text", "body": "greetings from the martians"},
            )
        )["event_id"]

        async def found_at_a() -> bool:
            answer = await ca.ok(
                alice,
                "POST",
                "/search",
                {"search_categories": {"room_events": {"search_term": "martians"}}},
            )
            results = answer["search_categories"]["room_events"]["results"]
            return [result["result"]["event_id"] for result in results] == [sent]

        await eventually(found_at_a, "the message from B found at A")


async def test_backfilled_history_is_found(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as (a, b, ca, cb, alice, bob):
        room_id = await ca.create_room(alice, preset="public_chat")

        async def send_at_a(txn: str, body: str) -> str:
            path = f"/rooms/{q(room_id)}/send/m.room.message/{txn}"
            content = {"msgtype": "m.text", "body": body}
            event_id: str = (await ca.ok(alice, "PUT", path, content))["event_id"]
            return event_id

        early = await send_at_a("early", "martians in the early days")
        for i in range(30):
            await send_at_a(f"filler{i}", f"filler {i}")
        await cb.ok(bob, "POST", f"/join/{q(room_id)}?via={q(a.server_name)}", {})
        had_early = await b.server.storage.have_seen_events([early])

        def search_body() -> dict[str, Any]:
            return {"search_categories": {"room_events": {"search_term": "martians"}}}

        before_paging = await cb.ok(bob, "POST", "/search", search_body())
        # Paging back through B fetches the history B lacks from A.
        token = None
        while True:
            params: dict[str, Any] = {"dir": "b", "limit": 50}
            if token is not None:
                params["from"] = token
            page = await cb.ok(bob, "GET", f"/rooms/{q(room_id)}/messages", params=params)
            token = page.get("end")
            if token is None:
                break
        after_paging = await cb.ok(bob, "POST", "/search", search_body())

    assert early not in had_early
    assert before_paging["search_categories"]["room_events"]["results"] == []
    (result,) = after_paging["search_categories"]["room_events"]["results"]
    assert result["result"]["event_id"] == early
