"""A push gateway's answer is the gateway's to get wrong: whatever it
answers with a 200, the notification counts as delivered."""

from pathlib import Path

import pytest
import trio

from ranvier.push_gateway import HttpPushGateway
from ranvier.testing.hostile import deeply_nested
from ranvier.testing.network import Pki
from ranvier.testing.push_gateway import FakePushGateway

_NOTIFICATION = {"room_id": "!room:example.org", "devices": [{"pushkey": "k", "app_id": "a"}]}


@pytest.mark.parametrize(
    "answer",
    [
        b'{"rejected": ["k"]}',
        b"{not json",
        b'{"rejected": ' + deeply_nested(900) + b"}",
        b'{"rejected": ["k"], "other": ' + deeply_nested(5_000) + b"}",
        deeply_nested(5_000),
    ],
    ids=["good", "not JSON", "rejected 900 deep", "a field 5000 deep", "5000 deep"],
)
async def test_an_unreadable_answer_is_a_delivery_with_nothing_rejected(
    tmp_path: Path, nursery: trio.Nursery, answer: bytes
) -> None:
    pki = Pki.create(tmp_path)
    gateway = FakePushGateway(answer=answer)
    url = await gateway.start(nursery, pki)
    client = HttpPushGateway(ca_file=pki.ca_file)
    try:
        rejected = await client.notify(url, _NOTIFICATION)
    finally:
        await client.aclose()
    assert rejected == (["k"] if answer == b'{"rejected": ["k"]}' else [])
    assert (await gateway.next())["room_id"] == "!room:example.org"
