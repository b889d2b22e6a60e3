"""Account management through a client_reader worker: the password
change, reports, OpenID tokens and the deactivation are written by the main
process's storage actor, and the main process acts on them at once (tokens
logged out there too, the rooms left as its members see them)."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import httpx
from _worker_configs import main_and_worker_configs

from ranvier.replication.worker import open_worker
from ranvier.testing.homeserver import TestHomeserver, TestUser, open_test_homeserver

_V3 = "/_matrix/client/v3"
PASSWORD = "alices first password"
NEW_PASSWORD = "alices second password"


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _auth(session: str, password: str) -> dict[str, Any]:
    return {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "alice"},
        "password": password,
        "session": session,
    }


async def _with_password(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], password: str
) -> httpx.Response:
    challenge = await http.post(f"{_V3}{path}", json=body)
    assert challenge.status_code == 401, challenge.text
    session = challenge.json()["session"]
    return await http.post(f"{_V3}{path}", json={**body, "auth": _auth(session, password)})


async def _login(http: httpx.AsyncClient, device_id: str, password: str) -> httpx.Response:
    return await http.post(
        f"{_V3}/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "alice"},
            "password": password,
            "device_id": device_id,
        },
    )


async def _whoami(http: httpx.AsyncClient, user: TestUser) -> int:
    answer = await http.get(
        f"{_V3}/account/whoami", headers={"Authorization": f"Bearer {user.access_token}"}
    )
    return answer.status_code


async def test_account_management_through_a_worker(tmp_path: Path) -> None:
    main_config, worker_config = main_and_worker_configs(tmp_path)
    async with open_test_homeserver(tmp_path / "main", config=main_config) as main:
        alice = await main.register_user("alice", PASSWORD)
        bob = await main.register_user("bob")
        async with (
            open_worker(worker_config, "client_reader") as worker,
            TestHomeserver(worker).client(alice) as on_worker,
            TestHomeserver(worker).client() as anonymous_worker,
            main.client(bob) as bob_on_main,
            main.client() as anonymous_main,
        ):
            logged_in = await _login(anonymous_main, "PHONE", PASSWORD)
            assert logged_in.status_code == 200
            phone = TestUser(alice.user_id, logged_in.json()["access_token"], "PHONE")
            assert await _whoami(anonymous_worker, phone) == 200
            assert await _whoami(anonymous_main, phone) == 200

            # The password, changed through the worker.
            changed = await _with_password(
                on_worker, "/account/password", {"new_password": NEW_PASSWORD}, PASSWORD
            )
            assert (changed.status_code, changed.json()) == (200, {})
            assert await _whoami(anonymous_main, phone) == 401
            assert await _whoami(anonymous_worker, phone) == 401
            assert await _whoami(anonymous_worker, alice) == 200
            assert (await _login(anonymous_main, "OLD", PASSWORD)).status_code == 403
            assert (await _login(anonymous_main, "NEW", NEW_PASSWORD)).status_code == 200

            # A report, and an OpenID token, through the worker.
            created = await bob_on_main.post(f"{_V3}/createRoom", json={"preset": "public_chat"})
            room_id = created.json()["room_id"]
            joined = await on_worker.post(f"{_V3}/rooms/{_q(room_id)}/join", json={})
            assert joined.status_code == 200, joined.text
            sent = await bob_on_main.put(
                f"{_V3}/rooms/{_q(room_id)}/send/m.room.message/t1",
                json={"msgtype": "m.text", "body": "rude"},
            )
            event_id = sent.json()["event_id"]
            reported = await on_worker.post(
                f"{_V3}/rooms/{_q(room_id)}/report/{_q(event_id)}", json={"reason": "rude"}
            )
            assert (reported.status_code, reported.json()) == (200, {})
            records, total = await main.server.storage.reports.list_reports(after=0, limit=10)
            assert total == 1
            assert (records[0].event_id, records[0].user_id) == (event_id, alice.user_id)
            token = await on_worker.post(
                f"{_V3}/user/{_q(alice.user_id)}/openid/request_token", json={}
            )
            assert token.status_code == 200
            assert await main.server.accounts.openid_user(token.json()["access_token"]) == (
                alice.user_id
            )

            # Deactivated through the worker: the main process refuses the
            # login, and Bob sees Alice leave.
            deactivated = await _with_password(on_worker, "/account/deactivate", {}, NEW_PASSWORD)
            assert deactivated.json() == {"id_server_unbind_result": "no-support"}
            assert await _whoami(anonymous_main, alice) == 401
            assert await _whoami(anonymous_worker, alice) == 401
            refused = await _login(anonymous_main, "BACK", NEW_PASSWORD)
            assert (refused.status_code, refused.json()["errcode"]) == (403, "M_USER_DEACTIVATED")
            members = await bob_on_main.get(f"{_V3}/rooms/{_q(room_id)}/joined_members")
            assert list(members.json()["joined"]) == [bob.user_id]
            assert await main.server.accounts.openid_user(token.json()["access_token"]) is None
