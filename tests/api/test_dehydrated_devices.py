"""Dehydrated devices (MSC3814) over real HTTP: uploading, reading,
replacing and deleting one, its keys found and claimed by others, and the
to-device messages waiting for it read page by page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from _client import SharedRoom, open_shared_room
from _dehydrated import dehydrated_body, ok, refused
from _e2e import OTK, DeviceKeys, device_keys

from ranvier.testing.homeserver import TestUser


@dataclass
class Env(SharedRoom):
    async def dehydrate(self, user: TestUser, device_id: str, *otks: str) -> DeviceKeys:
        body, keys = dehydrated_body(user, device_id, *otks)
        assert await ok(self.client, user, "PUT", "", body) == {"device_id": device_id}
        return keys

    async def query(self, user: TestUser, of: TestUser) -> dict[str, Any]:
        body: dict[str, Any] = {"device_keys": {of.user_id: []}}
        found = await self.client.ok(user, "POST", "/keys/query", body)
        devices: dict[str, Any] = found["device_keys"][of.user_id]
        return devices

    async def to_device(self, sender: TestUser, txn_id: str, to: TestUser, device: str) -> None:
        body = {"messages": {to.user_id: {device: {"txn": txn_id}}}}
        await self.client.ok(sender, "PUT", f"/sendToDevice/m.test/{txn_id}", body)

    async def events(self, user: TestUser, device_id: str, token: str | None) -> dict[str, Any]:
        body: dict[str, str] = {} if token is None else {"next_batch": token}
        answer: dict[str, Any] = await ok(self.client, user, "POST", f"/{device_id}/events", body)
        return answer


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with open_shared_room(tmp_path, Env) as shared:
        yield shared


async def test_the_feature_is_announced(env: Env) -> None:
    versions = await env.client.http.get("/_matrix/client/versions")
    assert versions.json()["unstable_features"]["org.matrix.msc3814"] is True


async def test_a_dehydrated_device_is_stored_and_its_keys_served(env: Env) -> None:
    await refused(env.client, env.alice, "GET", status=404, errcode="M_NOT_FOUND")
    keys = await env.dehydrate(env.alice, "DEHYDRATED1", "a", "b")
    answer = await ok(env.client, env.alice, "GET")
    assert answer == {
        "device_id": "DEHYDRATED1",
        "device_data": {"algorithm": "org.matrix.msc3814.v1.olm", "device_pickle": "DEHYDRATED1"},
    }
    # Another user's client encrypts to it as to any device.
    found = await env.query(env.bob, env.alice)
    shown = found["DEHYDRATED1"]
    assert shown.pop("unsigned") == {"device_display_name": "Dehydrated device"}
    assert shown == keys.body
    claim = {"one_time_keys": {env.alice.user_id: {"DEHYDRATED1": OTK}}}
    claimed: list[str] = []
    for _ in range(3):
        answer = await env.client.ok(env.bob, "POST", "/keys/claim", claim)
        claimed.extend(answer["one_time_keys"][env.alice.user_id]["DEHYDRATED1"])
    assert claimed == [f"{OTK}:a", f"{OTK}:b", f"{OTK}:fb"]
    # It is one of Alice's devices, and its token-less self logs nobody in.
    devices = await env.client.ok(env.alice, "GET", "/devices")
    assert sorted(d["device_id"] for d in devices["devices"]) == sorted(
        [env.alice.device_id, "DEHYDRATED1"]
    )
    tokens = await env.hs.server.storage.readers.read(
        lambda conn: conn.execute(
            "SELECT COUNT(*) FROM access_tokens WHERE device_id = 'DEHYDRATED1'"
        ).fetchone()[0]
    )
    assert tokens == 0
    # Bob has none of his own.
    await refused(env.client, env.bob, "GET", status=404, errcode="M_NOT_FOUND")


async def test_replacing_deletes_the_old_device_its_keys_and_messages(env: Env) -> None:
    await env.dehydrate(env.alice, "OLD", "a")
    await env.to_device(env.bob, "t1", env.alice, "OLD")
    since = (await env.sync(env.bob))["next_batch"]
    new_keys = await env.dehydrate(env.alice, "NEW", "n")
    assert (await ok(env.client, env.alice, "GET"))["device_id"] == "NEW"
    found = await env.query(env.bob, env.alice)
    assert set(found) == {"NEW"}
    assert {k: v for k, v in found["NEW"].items() if k != "unsigned"} == new_keys.body
    claim = {"one_time_keys": {env.alice.user_id: {"OLD": OTK}}}
    assert (await env.client.ok(env.bob, "POST", "/keys/claim", claim))["one_time_keys"] == {}
    devices = await env.client.ok(env.alice, "GET", "/devices")
    assert "OLD" not in {d["device_id"] for d in devices["devices"]}
    # The old device's messages went with it; its ID is refused now.
    await refused(
        env.client, env.alice, "POST", "/OLD/events", {}, status=403, errcode="M_FORBIDDEN"
    )
    assert (await env.events(env.alice, "NEW", None))["events"] == []
    # Bob, who shares a room with Alice, is told her devices changed.
    synced = await env.sync(env.bob, since=since)
    assert env.alice.user_id in synced["device_lists"]["changed"]


async def test_deleting_removes_the_device_its_keys_and_messages(env: Env) -> None:
    await env.dehydrate(env.alice, "DEHYDRATED1", "a")
    await env.to_device(env.bob, "t1", env.alice, "DEHYDRATED1")
    assert await ok(env.client, env.alice, "DELETE") == {"device_id": "DEHYDRATED1"}
    await refused(env.client, env.alice, "GET", status=404, errcode="M_NOT_FOUND")
    await refused(env.client, env.alice, "DELETE", status=404, errcode="M_NOT_FOUND")
    await refused(
        env.client, env.alice, "POST", "/DEHYDRATED1/events", {}, status=404, errcode="M_NOT_FOUND"
    )
    assert await env.query(env.bob, env.alice) == {}
    inbox = await env.hs.server.storage.e2e_keys.to_device_messages(
        env.alice.user_id, "DEHYDRATED1", 0, 1 << 40, 10
    )
    assert inbox == []
    devices = await env.client.ok(env.alice, "GET", "/devices")
    assert [d["device_id"] for d in devices["devices"]] == [env.alice.device_id]


async def test_messages_are_fetched_page_by_page(env: Env) -> None:
    await env.dehydrate(env.alice, "DEHYDRATED1")
    # The MSC's first call may come without a body.
    assert await ok(env.client, env.alice, "POST", "/DEHYDRATED1/events") == {
        "events": [],
        "next_batch": "0",
    }
    await env.to_device(env.bob, "first", env.alice, "DEHYDRATED1")
    # Another of Alice's devices' messages are not the dehydrated device's.
    await env.to_device(env.bob, "other", env.alice, env.alice.device_id)
    many = [
        (env.alice.user_id, "DEHYDRATED1", msgspec.json.encode({"type": "m.test", "n": n}))
        for n in range(150)
    ]
    await env.hs.server.storage.e2e_keys.send_to_device(
        sender=env.bob.user_id, sender_device=None, txn_id=None, messages=many, now_ms=1
    )
    first = await env.events(env.alice, "DEHYDRATED1", None)
    assert len(first["events"]) == 100
    assert first["events"][0] == {
        "type": "m.test",
        "sender": env.bob.user_id,
        "content": {"txn": "first"},
    }
    assert [e["n"] for e in first["events"][1:]] == list(range(99))
    second = await env.events(env.alice, "DEHYDRATED1", first["next_batch"])
    assert [e["n"] for e in second["events"]] == list(range(99, 150))
    last = await env.events(env.alice, "DEHYDRATED1", second["next_batch"])
    assert last == {"events": [], "next_batch": second["next_batch"]}
    # A later message comes after the last token; the pages read are not
    # handed out again.
    await env.to_device(env.bob, "later", env.alice, "DEHYDRATED1")
    later = await env.events(env.alice, "DEHYDRATED1", second["next_batch"])
    assert [e["content"] for e in later["events"]] == [{"txn": "later"}]
    # Reading deletes nothing: an interrupted rehydration starts again.
    again = await env.events(env.alice, "DEHYDRATED1", None)
    assert again == first


async def test_only_the_owner_reads_their_current_device(env: Env) -> None:
    await env.dehydrate(env.alice, "ALICES")
    await env.to_device(env.bob, "t1", env.alice, "ALICES")
    # Bob has no dehydrated device; Carol has one of her own.
    await refused(
        env.client, env.bob, "POST", "/ALICES/events", {}, status=404, errcode="M_NOT_FOUND"
    )
    await env.dehydrate(env.carol, "CAROLS")
    await refused(
        env.client, env.carol, "POST", "/ALICES/events", {}, status=403, errcode="M_FORBIDDEN"
    )
    await refused(
        env.client,
        env.alice,
        "POST",
        f"/{env.alice.device_id}/events",
        {},
        status=403,
        errcode="M_FORBIDDEN",
    )
    await refused(
        env.client, None, "POST", "/ALICES/events", {}, status=401, errcode="M_MISSING_TOKEN"
    )
    await refused(env.client, None, "GET", status=401, errcode="M_MISSING_TOKEN")
    assert len((await env.events(env.alice, "ALICES", None))["events"]) == 1


@pytest.mark.parametrize(
    ("token", "errcode"),
    [
        (7, "M_BAD_JSON"),
        ("x1", "M_INVALID_PARAM"),
        ("-1", "M_INVALID_PARAM"),
        ("9" * 19, "M_INVALID_PARAM"),
    ],
)
async def test_a_next_batch_not_given_is_refused(env: Env, token: Any, errcode: str) -> None:
    await env.dehydrate(env.alice, "DEHYDRATED1")
    await refused(
        env.client,
        env.alice,
        "POST",
        "/DEHYDRATED1/events",
        {"next_batch": token},
        status=400,
        errcode=errcode,
    )


def _without(body: dict[str, Any], field: str) -> dict[str, Any]:
    return {name: value for name, value in body.items() if name != field}


def _bad_bodies(user: TestUser) -> list[tuple[str, dict[str, Any], str]]:
    body, keys = dehydrated_body(user, "NEW1", "a")
    other, _ = dehydrated_body(user, "NEW2")
    forged = dict(keys.body, algorithms=["changed after signing"])
    return [
        ("no device_id", _without(body, "device_id"), "M_MISSING_PARAM"),
        ("device_id not a string", dict(body, device_id=5), "M_BAD_JSON"),
        ("empty device_id", dict(body, device_id=""), "M_INVALID_PARAM"),
        ("no device_data", _without(body, "device_data"), "M_MISSING_PARAM"),
        ("device_data not an object", dict(body, device_data="x"), "M_BAD_JSON"),
        ("device_data without algorithm", dict(body, device_data={"p": 1}), "M_BAD_JSON"),
        ("display name not a string", dict(body, initial_device_display_name=1), "M_BAD_JSON"),
        (
            "display name too long",
            dict(body, initial_device_display_name="n" * 257),
            "M_INVALID_PARAM",
        ),
        ("no device_keys", _without(body, "device_keys"), "M_MISSING_PARAM"),
        ("another device's keys", dict(body, device_keys=other["device_keys"]), "M_INVALID_PARAM"),
        ("keys not signed so", dict(body, device_keys=forged), "M_INVALID_SIGNATURE"),
        ("bad one-time key name", dict(body, one_time_keys={"nocolon": "k"}), "M_INVALID_PARAM"),
        ("the ID of a logged-in device", dict(body, device_id=user.device_id), "M_INVALID_PARAM"),
    ]


@pytest.mark.parametrize("case", range(13))
async def test_bad_uploads_are_refused_and_write_nothing(env: Env, case: int) -> None:
    await env.dehydrate(env.alice, "KEPT", "k")
    what, body, errcode = _bad_bodies(env.alice)[case]
    if what == "the ID of a logged-in device":
        body = dict(body, device_keys=device_keys(env.alice).body)
    await refused(env.client, env.alice, "PUT", "", body, status=400, errcode=errcode)
    assert (await ok(env.client, env.alice, "GET"))["device_id"] == "KEPT"
    found = await env.query(env.bob, env.alice)
    assert "KEPT" in found
    assert "NEW1" not in found


async def test_a_body_not_an_object_is_refused(env: Env) -> None:
    await refused(env.client, env.alice, "PUT", "", [1], status=400, errcode="M_NOT_JSON")
    await refused(
        env.client, env.alice, "POST", "/D/events", "token", status=400, errcode="M_NOT_JSON"
    )


def test_every_bad_body_is_tried() -> None:
    user = TestUser("@a:x", "t", "D")
    assert len(_bad_bodies(user)) == 13


async def test_a_dehydrated_device_deleted_as_a_device_is_gone(env: Env) -> None:
    dave = await env.hs.register_user("dave", "daves password")
    await env.dehydrate(dave, "DEHYDRATED1", "a")
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": dave.user_id},
        "password": "daves password",
    }
    body = {"devices": ["DEHYDRATED1"], "auth": auth}
    await env.client.ok(dave, "POST", "/delete_devices", body)
    await refused(env.client, dave, "GET", status=404, errcode="M_NOT_FOUND")
    await refused(env.client, dave, "DELETE", status=404, errcode="M_NOT_FOUND")
    assert await env.query(env.bob, dave) == {}
    # A new one may take its place, under the same ID too.
    keys = await env.dehydrate(dave, "DEHYDRATED1", "b")
    found = await env.query(env.bob, dave)
    assert {k: v for k, v in found["DEHYDRATED1"].items() if k != "unsigned"} == keys.body
