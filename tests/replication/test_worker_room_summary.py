"""Room summaries and reports of users through a client_reader worker: a
room made through the worker summarised by both processes (a private one
hidden from a stranger on either), and a user reported through the worker
kept by the main process's storage actor and listed by its admin API."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from _worker_configs import alice_on_both

_V1 = "/_matrix/client/v1"
_V3 = "/_matrix/client/v3"


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


async def test_summaries_and_user_reports_through_the_worker(tmp_path: Path) -> None:
    async with alice_on_both(tmp_path) as both:
        main, on_worker, on_main = both.main, both.on_worker, both.on_main
        bob = await main.register_user("bob")
        admin = await main.register_user("admin", admin=True)
        created = await on_worker.post(
            f"{_V3}/createRoom",
            json={"preset": "public_chat", "name": "Lobby", "room_alias_name": "lobby"},
        )
        assert created.status_code == 200, created.text
        lobby = created.json()["room_id"]
        secret = (
            await on_worker.post(f"{_V3}/createRoom", json={"preset": "private_chat"})
        ).json()["room_id"]

        for http in (on_worker, on_main):
            shown = await http.get(f"{_V1}/room_summary/{_q(f'#lobby:{main.server_name}')}")
            assert shown.status_code == 200, shown.text
            assert (shown.json()["room_id"], shown.json()["name"]) == (lobby, "Lobby")
            assert shown.json()["membership"] == "join"
            mine = await http.get(f"{_V1}/room_summary/{_q(secret)}")
            assert mine.status_code == 200, mine.text
        bob_headers = {"Authorization": f"Bearer {bob.access_token}"}
        for http in (on_worker, on_main):
            hidden = await http.get(f"{_V1}/room_summary/{_q(secret)}", headers=bob_headers)
            assert (hidden.status_code, hidden.json()["errcode"]) == (404, "M_NOT_FOUND")

        reported = await on_worker.post(
            f"{_V3}/users/{_q(bob.user_id)}/report", json={"reason": "spam"}
        )
        assert (reported.status_code, reported.json()) == (200, {})
        listed = await on_main.get(
            "/_synapse/admin/v1/user_reports",
            headers={"Authorization": f"Bearer {admin.access_token}"},
        )
        assert listed.status_code == 200, listed.text
        (report,) = listed.json()["user_reports"]
        assert (report["target_user_id"], report["user_id"], report["reason"]) == (
            bob.user_id,
            both.alice.user_id,
            "spam",
        )
