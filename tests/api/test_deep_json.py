"""Request bodies nested too deeply are invalid JSON: 400 ``M_NOT_JSON``,
never a 500, whether the decoder could have read them or not.
"""

import logging
from pathlib import Path
from typing import Any

import pytest

from ranvier.protocol.untrusted_json import MAX_JSON_NESTING
from ranvier.testing import open_test_homeserver

V3 = "/_matrix/client/v3"


def _deep_content(depth: int) -> bytes:
    """A JSON object nesting ``depth`` levels in all."""
    return (
        b'{"msgtype":"m.text","body":"deep","x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    )


def _nested_list(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


async def test_deep_request_bodies_are_not_json(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_test_homeserver(tmp_path) as hs:
        alice = await hs.register_user("alice")
        async with hs.client(alice) as client:
            created = await client.post(f"{V3}/createRoom", json={})
            room_id = created.json()["room_id"]
            with caplog.at_level(logging.ERROR, logger="ranvier"):
                for number, depth in enumerate((MAX_JSON_NESTING + 1, 900, 5_000, 32_000)):
                    sent = await client.put(
                        f"{V3}/rooms/{room_id}/send/m.room.message/deep{number}",
                        content=_deep_content(depth),
                        headers={"content-type": "application/json"},
                    )
                    assert sent.status_code == 400, (depth, sent.text)
                    assert sent.json()["errcode"] == "M_NOT_JSON"
                    assert "nested too deeply" in sent.json()["error"]
                    # A body the handler never reads as an event: the same.
                    filtered = await client.post(
                        f"{V3}/user/{alice.user_id}/filter",
                        content=b"[" * depth + b"]" * depth,
                        headers={"content-type": "application/json"},
                    )
                    assert filtered.status_code == 400, (depth, filtered.text)
                    assert filtered.json()["errcode"] == "M_NOT_JSON"
            assert [record.getMessage() for record in caplog.records] == []
            # Content as deep as the limit allows in an event (the event
            # itself one level deeper) is taken, stored and read back.
            content = {"msgtype": "m.text", "body": "deep", "x": _nested_list(MAX_JSON_NESTING - 2)}
            sent = await client.put(f"{V3}/rooms/{room_id}/send/m.room.message/fits", json=content)
            assert sent.status_code == 200, sent.text
            event_id = sent.json()["event_id"]
            fetched = await client.get(f"{V3}/rooms/{room_id}/event/{event_id}")
            assert fetched.json()["content"] == content
            synced = await client.get(f"{V3}/sync")
            assert synced.status_code == 200
            timeline = synced.json()["rooms"]["join"][room_id]["timeline"]["events"]
            assert content in [event["content"] for event in timeline]


async def test_filters_in_the_query_nested_too_deeply_are_invalid(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path) as hs:
        alice = await hs.register_user("alice")
        async with hs.client(alice) as client:
            created = await client.post(f"{V3}/createRoom", json={})
            room_id = created.json()["room_id"]
            for depth in (MAX_JSON_NESTING + 1, 5_000):
                deep = '{"types": ' + "[" * depth + "]" * depth + "}"
                messages = await client.get(
                    f"{V3}/rooms/{room_id}/messages", params={"dir": "b", "filter": deep}
                )
                synced = await client.get(f"{V3}/sync", params={"filter": deep})
                for answer in (messages, synced):
                    assert answer.status_code == 400, (depth, answer.text)
                    assert answer.json()["errcode"] == "M_INVALID_PARAM"
                    assert "nested too deeply" in answer.json()["error"]
