"""Shadow bans across a client_reader worker: a ban set on the main process
reaches the token the worker had cached, and the worker then answers the
user's sends, typing and invites as the main process would, refusing
nothing and passing nothing on; a transaction answered on the worker is
answered the same on the main process. Lifted through the worker's admin
API, the ban leaves the main process's cached token too."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import httpx
import trio
from _worker_configs import alice_on_both

from ranvier.testing.homeserver import TestHomeserver

_V3 = "/_matrix/client/v3"
_ADMIN = "/_synapse/admin/v1"


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


async def _send(client: httpx.AsyncClient, room_id: str, txn: str) -> str:
    sent = await client.put(
        f"{_V3}/rooms/{_q(room_id)}/send/m.room.message/{txn}",
        json={"msgtype": "m.text", "body": f"message {txn}"},
    )
    assert sent.status_code == 200, sent.text
    event_id: str = sent.json()["event_id"]
    return event_id


async def _seen(client: httpx.AsyncClient, room_id: str, event_id: str) -> bool:
    shown = await client.get(f"{_V3}/rooms/{_q(room_id)}/event/{_q(event_id)}")
    assert shown.status_code in (200, 404), shown.text
    return shown.status_code == 200


async def _first_send_of(
    client: httpx.AsyncClient, room_id: str, prefix: str, *, real: bool
) -> tuple[str, str]:
    """Send until the process ``client`` calls has heard of the ban's change
    (the invalidation travels on the replication stream): a faked message
    is one its sender cannot read back. The transaction and event of the
    first send that went the way asked."""
    for attempt in range(500):
        txn = f"{prefix}{attempt}"
        event_id = await _send(client, room_id, txn)
        if await _seen(client, room_id, event_id) == real:
            return txn, event_id
        await trio.sleep(0.02)
    raise AssertionError(f"the sends through {client.base_url} never changed")


async def test_a_shadow_ban_holds_on_the_worker_and_is_lifted_through_it(
    tmp_path: Path,
) -> None:
    async with alice_on_both(tmp_path) as both:
        main, alice = both.main, both.alice
        root, bob, carol = (
            await main.register_user("root", admin=True),
            await main.register_user("bob"),
            await main.register_user("carol"),
        )
        made = await both.on_main.post(f"{_V3}/createRoom", json={"preset": "public_chat"})
        room_id = made.json()["room_id"]
        async with (
            main.client(root) as root_on_main,
            main.client(bob) as bob_on_main,
            main.client(carol) as carol_on_main,
            TestHomeserver(both.worker).client(root) as root_on_worker,
        ):
            joined = await bob_on_main.post(f"{_V3}/rooms/{_q(room_id)}/join", json={})
            assert joined.status_code == 200, joined.text
            # Alice's token is looked up, and cached, on the worker first.
            assert (await both.on_worker.get(f"{_V3}/account/whoami")).status_code == 200
            banned = await root_on_main.post(f"{_ADMIN}/users/{_q(alice.user_id)}/shadow_ban")
            assert (banned.status_code, banned.json()) == (200, {})

            txn, faked = await _first_send_of(both.on_worker, room_id, "w", real=False)
            assert not await main.server.storage.get_events([faked])
            assert not await _seen(bob_on_main, room_id, faked)
            # The transaction's answer was recorded for the main process too.
            assert await _send(both.on_main, room_id, txn) == faked

            typing = await both.on_worker.put(
                f"{_V3}/rooms/{_q(room_id)}/typing/{_q(alice.user_id)}", json={"typing": True}
            )
            assert (typing.status_code, typing.json()) == (200, {})
            assert main.server.typing_notices.typing_in(room_id) == []
            invited = await both.on_worker.post(
                f"{_V3}/rooms/{_q(room_id)}/invite", json={"user_id": carol.user_id}
            )
            assert (invited.status_code, invited.json()) == (200, {}), invited.text
            synced = await carol_on_main.get(f"{_V3}/sync")
            assert room_id not in synced.json()["rooms"]["invite"]

            # Alice's token is cached on the main process by now; the lift
            # goes through the worker, and the main process drops it.
            lifted = await root_on_worker.delete(f"{_ADMIN}/users/{_q(alice.user_id)}/shadow_ban")
            assert (lifted.status_code, lifted.json()) == (200, {})
            shown = await root_on_main.get(f"/_synapse/admin/v2/users/{_q(alice.user_id)}")
            assert shown.json()["shadow_banned"] is False
            _, sent = await _first_send_of(both.on_main, room_id, "m", real=True)
            assert await _seen(bob_on_main, room_id, sent)
