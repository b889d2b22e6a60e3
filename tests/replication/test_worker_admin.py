"""The admin API through a client_reader worker: accounts made and changed
there are written by the main process's storage actor, a changed admin
flag reaches tokens the main process had cached, and a room blocked and
shut there is refused and left on the main process."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import trio
from _worker_configs import alice_on_both

from ranvier.testing.homeserver import TestHomeserver

_V3 = "/_matrix/client/v3"
_ADMIN = "/_synapse/admin"


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


async def test_admin_changes_made_on_a_worker_hold_on_the_main_process(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path) as both:
        root = await both.main.register_user("root", admin=True)
        bob = await both.main.register_user("bob")
        main = TestHomeserver(both.main.server)
        async with (
            TestHomeserver(both.worker).client(root) as root_on_worker,
            main.client(bob) as bob_on_main,
        ):
            # Bob's token is looked up (and cached) on the main process first.
            refused = await bob_on_main.get(f"{_ADMIN}/v2/users")
            assert refused.status_code == 403, refused.text

            carol = f"@carol:{both.main.server_name}"
            made = await root_on_worker.put(
                f"{_ADMIN}/v2/users/{_q(carol)}", json={"password": "pw", "displayname": "Carol"}
            )
            assert made.status_code == 201, made.text
            login = await bob_on_main.post(
                f"{_V3}/login",
                json={
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": "carol"},
                    "password": "pw",
                },
            )
            assert login.status_code == 200, login.text

            granted = await root_on_worker.put(
                f"{_ADMIN}/v1/users/{_q(bob.user_id)}/admin", json={"admin": True}
            )
            assert granted.status_code == 200, granted.text
            for _ in range(500):
                if (await bob_on_main.get(f"{_ADMIN}/v2/users")).status_code == 200:
                    break
                await trio.sleep(0.02)
            else:
                raise AssertionError("Bob's cached token on the main process kept the old flag")

            created = await both.on_main.post(f"{_V3}/createRoom", json={"preset": "public_chat"})
            room_id = created.json()["room_id"]
            shut = await root_on_worker.request(
                "DELETE", f"{_ADMIN}/v2/rooms/{_q(room_id)}", json={"block": True}
            )
            assert shut.status_code == 200, shut.text
            members = await both.on_main.get(f"{_V3}/rooms/{_q(room_id)}/joined_members")
            assert members.status_code == 403, members.text  # Alice is no longer in it
            joined = await bob_on_main.post(f"{_V3}/rooms/{_q(room_id)}/join", json={})
            assert (joined.status_code, joined.json()["errcode"]) == (403, "M_FORBIDDEN")
