"""``/relations`` and ``/threads`` over real HTTP on started homeservers:
each relation type and the filters by type, paging both ways with tokens,
recursion, redacted relations, who may see what, thread ordering and
aggregations, and relations of events received over federation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _client import SharedRoom, open_shared_room, q
from _federation import eventually, share_a_room, two_servers

from ranvier.testing.homeserver import TestUser

V1 = "/_matrix/client/v1"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[SharedRoom]:
    async with open_shared_room(tmp_path, SharedRoom) as shared:
        yield shared


_txn = iter(range(1_000_000))


async def _send(
    env: SharedRoom,
    user: TestUser,
    content: dict[str, Any],
    *,
    event_type: str = "m.room.message",
    room_id: str | None = None,
) -> str:
    room = room_id or env.room_id
    answer = await env.client.ok(
        user, "PUT", f"/rooms/{q(room)}/send/{event_type}/t{next(_txn)}", content
    )
    event_id: str = answer["event_id"]
    return event_id


def _text(body: str, relation: dict[str, Any] | None = None) -> dict[str, Any]:
    content: dict[str, Any] = {"msgtype": "m.text", "body": body}
    if relation is not None:
        content["m.relates_to"] = relation
    return content


def _thread(root: str) -> dict[str, Any]:
    return {"rel_type": "m.thread", "event_id": root}


async def _get(env: SharedRoom, user: TestUser, path: str, **params: Any) -> tuple[int, Any]:
    response = await env.client.http.get(
        V1 + path, params=params, headers={"Authorization": f"Bearer {user.access_token}"}
    )
    return response.status_code, response.json()


async def _ok(env: SharedRoom, user: TestUser, path: str, **params: Any) -> Any:
    status, answer = await _get(env, user, path, **params)
    assert status == 200, (path, answer)
    return answer


def _relations_path(env: SharedRoom, event_id: str, *rest: str) -> str:
    tail = "".join(f"/{q(part)}" for part in rest)
    return f"/rooms/{q(env.room_id)}/relations/{q(event_id)}{tail}"


def _bodies(answer: Any) -> list[str | None]:
    return [event["content"].get("body") for event in answer["chunk"]]


async def _a_relation_of_each_type(env: SharedRoom) -> tuple[str, dict[str, str]]:
    root = await _send(env, env.alice, _text("root"))
    ids = {
        "reply": await _send(env, env.bob, _text("in thread", _thread(root))),
        "reaction": await _send(
            env,
            env.bob,
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "👍"}},
            event_type="m.reaction",
        ),
        "edit": await _send(
            env,
            env.alice,
            _text("* root!", {"rel_type": "m.replace", "event_id": root})
            | {"m.new_content": {"msgtype": "m.text", "body": "root!"}},
        ),
        "custom": await _send(
            env, env.bob, _text("custom", {"rel_type": "org.example.rel", "event_id": root})
        ),
    }
    # A reply and an unrelated message are no relations.
    await _send(env, env.bob, _text("quote", {"m.in_reply_to": {"event_id": root}}))
    await _send(env, env.bob, _text("unrelated"))
    return root, ids


async def test_relations_of_every_type_newest_first(env: SharedRoom) -> None:
    root, ids = await _a_relation_of_each_type(env)

    answer = await _ok(env, env.bob, _relations_path(env, root))

    assert [event["event_id"] for event in answer["chunk"]] == [
        ids["custom"],
        ids["edit"],
        ids["reaction"],
        ids["reply"],
    ]
    assert "next_batch" not in answer
    assert "recursion_depth" not in answer


async def test_relations_filtered_by_rel_type_and_event_type(env: SharedRoom) -> None:
    root, ids = await _a_relation_of_each_type(env)

    threads = await _ok(env, env.bob, _relations_path(env, root, "m.thread"))
    reactions = await _ok(env, env.bob, _relations_path(env, root, "m.annotation", "m.reaction"))
    none = await _ok(env, env.bob, _relations_path(env, root, "m.annotation", "m.room.message"))

    assert [event["event_id"] for event in threads["chunk"]] == [ids["reply"]]
    assert [event["event_id"] for event in reactions["chunk"]] == [ids["reaction"]]
    assert reactions["chunk"][0]["content"]["m.relates_to"]["key"] == "👍"
    assert none["chunk"] == []


async def test_relations_page_back_and_forward_with_tokens(env: SharedRoom) -> None:
    root = await _send(env, env.alice, _text("root"))
    for i in range(5):
        await _send(env, env.bob, _text(f"r{i}", _thread(root)))
    path = _relations_path(env, root, "m.thread")

    pages: list[list[str | None]] = []
    token = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if token is not None:
            params["from"] = token
        answer = await _ok(env, env.bob, path, **params)
        pages.append(_bodies(answer))
        if token is not None:
            assert answer["prev_batch"] == token
        token = answer.get("next_batch")
        if token is None:
            break
    forward = await _ok(env, env.bob, path, dir="f", limit=3)
    rest = await _ok(env, env.bob, path, dir="f", limit=3, **{"from": forward["next_batch"]})

    assert pages == [["r4", "r3"], ["r2", "r1"], ["r0"]]
    assert _bodies(forward) == ["r0", "r1", "r2"]
    assert _bodies(rest) == ["r3", "r4"]
    assert "next_batch" not in rest


async def test_tokens_of_messages_bound_relations(env: SharedRoom) -> None:
    root = await _send(env, env.alice, _text("root"))
    await _send(env, env.bob, _text("old", _thread(root)))
    page = await env.client.ok(
        env.bob, "GET", f"/rooms/{q(env.room_id)}/messages", params={"dir": "b", "limit": 1}
    )
    await _send(env, env.bob, _text("new", _thread(root)))
    path = _relations_path(env, root)

    older = await _ok(env, env.bob, path, **{"from": page["start"]})
    newer = await _ok(env, env.bob, path, to=page["start"])

    assert _bodies(older) == ["old"]
    assert _bodies(newer) == ["new"]


async def test_recurse_follows_relations_of_relations(env: SharedRoom) -> None:
    root = await _send(env, env.alice, _text("root"))
    reply = await _send(env, env.bob, _text("reply", _thread(root)))
    reaction = await _send(
        env,
        env.alice,
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": reply, "key": "x"}},
        event_type="m.reaction",
    )
    path = _relations_path(env, root)

    direct = await _ok(env, env.bob, path, recurse="false")
    deep = await _ok(env, env.bob, path, recurse="true")
    reactions = await _ok(env, env.bob, _relations_path(env, root, "m.annotation"), recurse="true")

    assert [event["event_id"] for event in direct["chunk"]] == [reply]
    assert direct["recursion_depth"] == 1
    assert [event["event_id"] for event in deep["chunk"]] == [reaction, reply]
    assert deep["recursion_depth"] == 3
    assert [event["event_id"] for event in reactions["chunk"]] == [reaction]


async def test_a_redacted_event_relates_no_more(env: SharedRoom) -> None:
    root = await _send(env, env.alice, _text("root"))
    kept = await _send(env, env.bob, _text("kept", _thread(root)))
    gone = await _send(env, env.bob, _text("gone", _thread(root)))
    await env.client.ok(env.bob, "PUT", f"/rooms/{q(env.room_id)}/redact/{q(gone)}/redaction1", {})

    answer = await _ok(env, env.alice, _relations_path(env, root))
    threads = await _ok(env, env.alice, f"/rooms/{q(env.room_id)}/threads")

    assert [event["event_id"] for event in answer["chunk"]] == [kept]
    summary = threads["chunk"][0]["unsigned"]["m.relations"]["m.thread"]
    assert summary["count"] == 1
    assert summary["latest_event"]["event_id"] == kept


async def test_relations_are_for_those_who_may_see_the_parent(env: SharedRoom) -> None:
    await env.client.ok(
        env.alice,
        "PUT",
        f"/rooms/{q(env.room_id)}/state/m.room.history_visibility/",
        {"history_visibility": "joined"},
    )
    early = await _send(env, env.alice, _text("early"))
    await _send(env, env.alice, _text("early reply", _thread(early)))
    stranger_status, stranger = await _get(env, env.carol, _relations_path(env, early))
    await env.client.ok(env.carol, "POST", f"/rooms/{q(env.room_id)}/join", {})
    root = await _send(env, env.alice, _text("root"))
    await _send(env, env.bob, _text("seen", _thread(root)))

    hidden_status, hidden = await _get(env, env.carol, _relations_path(env, early))
    seen = await _ok(env, env.carol, _relations_path(env, root))
    unknown_status, unknown = await _get(env, env.bob, _relations_path(env, "$nothing"))

    assert (stranger_status, stranger["errcode"]) == (404, "M_NOT_FOUND")
    assert (hidden_status, hidden["errcode"]) == (404, "M_NOT_FOUND")
    assert (unknown_status, unknown["errcode"]) == (404, "M_NOT_FOUND")
    assert _bodies(seen) == ["seen"]


async def test_relations_after_a_leave_are_not_shown(env: SharedRoom) -> None:
    root = await _send(env, env.alice, _text("root"))
    await _send(env, env.alice, _text("before", _thread(root)))
    await env.client.ok(env.bob, "POST", f"/rooms/{q(env.room_id)}/leave", {})
    await _send(env, env.alice, _text("after", _thread(root)))

    answer = await _ok(env, env.bob, _relations_path(env, root))
    threads = await _ok(env, env.bob, f"/rooms/{q(env.room_id)}/threads")

    assert _bodies(answer) == ["before"]
    summary = threads["chunk"][0]["unsigned"]["m.relations"]["m.thread"]
    assert (summary["count"], summary["latest_event"]["content"]["body"]) == (1, "before")


async def test_bad_parameters_are_refused(env: SharedRoom) -> None:
    root = await _send(env, env.alice, _text("root"))
    for params in ({"dir": "x"}, {"recurse": "yes"}, {"limit": "-2"}, {"from": "nope"}):
        status, answer = await _get(env, env.bob, _relations_path(env, root), **params)
        assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM"), params
    for params in ({"include": "mine"}, {"limit": "0"}, {"from": "?"}):
        status, answer = await _get(env, env.bob, f"/rooms/{q(env.room_id)}/threads", **params)
        assert (status, answer["errcode"]) == (400, "M_INVALID_PARAM"), params


async def test_a_token_is_required(env: SharedRoom) -> None:
    for path in (_relations_path(env, "$x"), f"/rooms/{q(env.room_id)}/threads"):
        response = await env.client.http.get(V1 + path)
        assert response.status_code == 401
        assert response.json()["errcode"] == "M_MISSING_TOKEN"


# --- Threads ---------------------------------------------------------------------------


async def test_threads_newest_activity_first_with_aggregations(env: SharedRoom) -> None:
    first = await _send(env, env.alice, _text("first"))
    second = await _send(env, env.bob, _text("second"))
    await _send(env, env.alice, _text("not a thread"))
    await _send(env, env.bob, _text("a", _thread(first)))
    await _send(env, env.bob, _text("b", _thread(second)))
    latest = await _send(env, env.bob, _text("c", _thread(first)))

    answer = await _ok(env, env.alice, f"/rooms/{q(env.room_id)}/threads")

    assert [event["event_id"] for event in answer["chunk"]] == [first, second]
    summary = answer["chunk"][0]["unsigned"]["m.relations"]["m.thread"]
    assert summary["count"] == 2
    assert summary["latest_event"]["event_id"] == latest
    # Alice started the first thread and never replied in the second.
    assert summary["current_user_participated"] is True
    second_summary = answer["chunk"][1]["unsigned"]["m.relations"]["m.thread"]
    assert second_summary["current_user_participated"] is False
    assert "next_batch" not in answer


async def test_threads_page_with_tokens_and_participated(env: SharedRoom) -> None:
    roots = [await _send(env, env.alice, _text(f"root{i}")) for i in range(4)]
    for i, root in enumerate(roots):
        await _send(env, env.bob if i % 2 else env.alice, _text(f"reply{i}", _thread(root)))
    path = f"/rooms/{q(env.room_id)}/threads"

    first = await _ok(env, env.bob, path, limit=3)
    rest = await _ok(env, env.bob, path, limit=3, **{"from": first["next_batch"]})
    mine = await _ok(env, env.bob, path, include="participated")

    assert [e["event_id"] for e in first["chunk"]] == roots[::-1][:3]
    assert [e["event_id"] for e in rest["chunk"]] == [roots[0]]
    assert "next_batch" not in rest
    assert [e["event_id"] for e in mine["chunk"]] == [roots[3], roots[1]]


async def test_threads_of_a_room_never_joined_are_forbidden(env: SharedRoom) -> None:
    status, answer = await _get(env, env.carol, f"/rooms/{q(env.room_id)}/threads")
    assert (status, answer["errcode"]) == (403, "M_FORBIDDEN")


# --- Federation ------------------------------------------------------------------------


async def test_relations_of_events_received_over_federation(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as servers:
        a, _, ca, cb, alice, bob = servers
        room_id = await share_a_room(servers)
        root = (
            await ca.ok(alice, "PUT", f"/rooms/{q(room_id)}/send/m.room.message/t1", _text("root"))
        )["event_id"]

        async def root_at_b() -> bool:
            status, _ = await cb.call(bob, "GET", f"/rooms/{q(room_id)}/event/{q(root)}")
            return status == 200

        await eventually(root_at_b, "the root at B")
        reply = (
            await cb.ok(
                bob,
                "PUT",
                f"/rooms/{q(room_id)}/send/m.room.message/t2",
                _text("from b", _thread(root)),
            )
        )["event_id"]
        headers = {"Authorization": f"Bearer {alice.access_token}"}

        async def reply_at_a() -> bool:
            status, _ = await ca.call(alice, "GET", f"/rooms/{q(room_id)}/event/{q(reply)}")
            return status == 200

        await eventually(reply_at_a, "the reply at A")
        relations = await ca.http.get(
            f"{V1}/rooms/{q(room_id)}/relations/{q(root)}/m.thread", headers=headers
        )
        threads = await ca.http.get(f"{V1}/rooms/{q(room_id)}/threads", headers=headers)

    assert [event["event_id"] for event in relations.json()["chunk"]] == [reply]
    (thread,) = threads.json()["chunk"]
    assert thread["event_id"] == root
    assert thread["unsigned"]["m.relations"]["m.thread"]["latest_event"]["sender"] == (bob.user_id)
    assert a.server_name not in bob.user_id


# --- Bundled aggregations --------------------------------------------------------------


def _by_id(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {event["event_id"]: event for event in events}


async def _edit(env: SharedRoom, user: TestUser, original: str, body: str) -> str:
    return await _send(
        env,
        user,
        _text(f"* {body}", {"rel_type": "m.replace", "event_id": original})
        | {"m.new_content": {"msgtype": "m.text", "body": body}},
    )


async def test_messages_and_context_bundle_threads_and_edits(env: SharedRoom) -> None:
    root = await _send(env, env.alice, _text("root"))
    reply = await _send(env, env.bob, _text("reply", _thread(root)))
    edited = await _send(env, env.bob, _text("typo"))
    edits = [
        await _edit(env, env.bob, edited, "fixed"),
        await _edit(env, env.bob, edited, "fixed again"),
    ]
    await _edit(env, env.alice, edited, "not hers to edit")
    plain = await _send(env, env.bob, _text("plain"))
    # The most recent edit by the spec: the latest timestamp, then the
    # largest event ID (two edits may share a millisecond).
    stamped = [
        (
            (await env.client.ok(env.bob, "GET", f"/rooms/{q(env.room_id)}/event/{q(edit)}"))[
                "origin_server_ts"
            ],
            edit,
        )
        for edit in edits
    ]
    newest_edit = max(stamped)[1]

    messages = await env.client.ok(
        env.bob, "GET", f"/rooms/{q(env.room_id)}/messages", params={"limit": 20}
    )
    context = await env.client.ok(
        env.bob, "GET", f"/rooms/{q(env.room_id)}/context/{q(edited)}", params={"limit": 20}
    )

    for events in (
        _by_id(messages["chunk"]),
        _by_id([*context["events_before"], context["event"], *context["events_after"]]),
    ):
        thread = events[root]["unsigned"]["m.relations"]["m.thread"]
        assert thread["count"] == 1
        assert thread["latest_event"]["event_id"] == reply
        assert thread["current_user_participated"] is True
        replaced = events[edited]["unsigned"]["m.relations"]["m.replace"]
        assert replaced["event_id"] == newest_edit
        assert "m.relations" not in events[plain].get("unsigned", {})
        assert "m.relations" not in events[reply].get("unsigned", {})


async def test_a_thread_someone_else_runs_is_not_participated(env: SharedRoom) -> None:
    root = await _send(env, env.bob, _text("root"))
    await _send(env, env.bob, _text("reply", _thread(root)))

    messages = await env.client.ok(env.alice, "GET", f"/rooms/{q(env.room_id)}/messages")

    thread = _by_id(messages["chunk"])[root]["unsigned"]["m.relations"]["m.thread"]
    assert thread["current_user_participated"] is False


async def test_event_and_sync_bundle_threads_and_edits(env: SharedRoom) -> None:
    root = await _send(env, env.alice, _text("root"))
    reply = await _send(env, env.bob, _text("reply", _thread(root)))
    edit = await _edit(env, env.alice, root, "root, edited")

    single = await env.client.ok(env.bob, "GET", f"/rooms/{q(env.room_id)}/event/{q(root)}")
    synced = await env.sync(env.bob)

    timeline = synced["rooms"]["join"][env.room_id]["timeline"]["events"]
    for event in (single, _by_id(timeline)[root]):
        bundle = event["unsigned"]["m.relations"]
        assert bundle["m.thread"]["latest_event"]["event_id"] == reply
        assert bundle["m.thread"]["current_user_participated"] is True
        assert bundle["m.replace"]["event_id"] == edit


async def test_a_left_rooms_sync_bundles_up_to_the_leave(env: SharedRoom) -> None:
    since = (await env.sync(env.bob))["next_batch"]
    root = await _send(env, env.alice, _text("root"))
    seen = await _send(env, env.alice, _text("seen", _thread(root)))
    await env.client.ok(env.bob, "POST", f"/rooms/{q(env.room_id)}/leave", {})
    await _send(env, env.alice, _text("after the leave", _thread(root)))

    synced = await env.sync(env.bob, since=since)

    timeline = synced["rooms"]["leave"][env.room_id]["timeline"]["events"]
    thread = _by_id(timeline)[root]["unsigned"]["m.relations"]["m.thread"]
    assert (thread["count"], thread["latest_event"]["event_id"]) == (1, seen)


async def test_relations_of_backfilled_history(tmp_path: Path) -> None:
    async with two_servers(tmp_path) as (a, b, ca, cb, alice, bob):
        room_id = await ca.create_room(alice, preset="public_chat")

        async def send_at_a(txn: str, content: dict[str, Any]) -> str:
            path = f"/rooms/{q(room_id)}/send/m.room.message/{txn}"
            event_id: str = (await ca.ok(alice, "PUT", path, content))["event_id"]
            return event_id

        root = await send_at_a("root", _text("root"))
        replies = [await send_at_a(f"r{i}", _text(f"r{i}", _thread(root))) for i in range(3)]
        for i in range(30):
            await send_at_a(f"filler{i}", _text(f"filler {i}"))
        await cb.ok(bob, "POST", f"/join/{q(room_id)}?via={q(a.server_name)}", {})
        have_root = await b.server.storage.have_seen_events([root])
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
        headers = {"Authorization": f"Bearer {bob.access_token}"}
        relations = await cb.http.get(
            f"{V1}/rooms/{q(room_id)}/relations/{q(root)}", headers=headers
        )
        threads = await cb.http.get(f"{V1}/rooms/{q(room_id)}/threads", headers=headers)

    assert root not in have_root
    assert [event["event_id"] for event in relations.json()["chunk"]] == replies[::-1]
    (thread,) = threads.json()["chunk"]
    assert thread["unsigned"]["m.relations"]["m.thread"]["count"] == 3
