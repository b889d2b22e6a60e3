"""Profile fields through a client_reader worker: the writes go to the main
process's storage actor (the size limit checked there too), and both
processes then show the same profile."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from _worker_configs import alice_on_both

_V3 = "/_matrix/client/v3"
_JOB = "org.example.job_title"


async def test_fields_set_through_a_worker_are_written_by_the_main_process(
    tmp_path: Path,
) -> None:
    async with alice_on_both(tmp_path) as both:
        alice = both.alice.user_id
        profile = f"{_V3}/profile/{urllib.parse.quote(alice, safe='')}"
        for key, value in (("m.tz", "Europe/Paris"), (_JOB, {"title": "Smith"})):
            put = await both.on_worker.put(f"{profile}/{key}", json={key: value})
            assert (put.status_code, put.json()) == (200, {}), put.text
        too_large = await both.on_worker.put(
            f"{profile}/org.example.big", json={"org.example.big": "x" * 65536}
        )
        assert (too_large.status_code, too_large.json()["errcode"]) == (
            400,
            "M_PROFILE_TOO_LARGE",
        )
        stored = await both.main.server.storage.client_data.profile_fields(alice)
        assert stored == {"m.tz": "Europe/Paris", _JOB: {"title": "Smith"}}
        deleted = await both.on_worker.delete(f"{profile}/m.tz")
        assert deleted.status_code == 200, deleted.text
        for client in (both.on_main, both.on_worker):
            read = await client.get(profile)
            assert (read.status_code, read.json()) == (200, {_JOB: {"title": "Smith"}})
