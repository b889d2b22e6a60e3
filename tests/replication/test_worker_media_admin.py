"""Quarantine, deletion and last access through a client_reader worker that
shares the main process's database and media store: the worker reads the
quarantine from the shared database, its admin writes go through the main
process, and its downloads note their access there."""

from __future__ import annotations

from pathlib import Path

from _worker_configs import main_and_worker_configs

from ranvier.config import MediaConfig
from ranvier.replication.worker import open_worker
from ranvier.testing.homeserver import TestHomeserver, open_test_homeserver

MEDIA = "/_matrix/media/v3"
AUTHED = "/_matrix/client/v1/media"
ADMIN = "/_synapse/admin/v1"


async def test_quarantine_and_deletion_hold_on_the_worker_and_the_main_process(
    tmp_path: Path,
) -> None:
    main_config, worker_config = main_and_worker_configs(
        tmp_path, media=MediaConfig(store_path=tmp_path / "media")
    )
    async with open_test_homeserver(tmp_path / "main", config=main_config) as main:
        alice = await main.register_user("alice")
        admin = await main.register_user("admin", admin=True)
        async with (
            open_worker(worker_config, "client_reader") as worker,
            TestHomeserver(worker).client(alice) as alice_on_worker,
            main.client(alice) as alice_on_main,
            TestHomeserver(worker).client(admin) as admin_on_worker,
            main.client(admin) as admin_on_main,
        ):
            uploaded = await alice_on_main.post(f"{MEDIA}/upload", content=b"shared")
            name, _, media_id = (
                str(uploaded.json()["content_uri"]).removeprefix("mxc://").partition("/")
            )
            download = f"{AUTHED}/download/{name}/{media_id}"
            # Served through the worker first: its access is written by the main process.
            first = await alice_on_worker.get(download)
            noted = await main.server.storage.media.media(name, media_id)

            quarantined = await admin_on_main.post(f"{ADMIN}/media/quarantine/{name}/{media_id}")
            on_worker = await alice_on_worker.get(download)
            unquarantined = await admin_on_worker.post(
                f"{ADMIN}/media/unquarantine/{name}/{media_id}"
            )
            again_on_main = await alice_on_main.get(download)
            again_on_worker = await alice_on_worker.get(download)

            deleted = await admin_on_worker.delete(f"{ADMIN}/media/{name}/{media_id}")
            gone_on_main = await alice_on_main.get(download)
            row = await main.server.storage.media.media(name, media_id)

    assert first.content == b"shared"
    assert noted is not None
    assert noted.last_access_ts is not None
    assert quarantined.status_code == 200
    assert (on_worker.status_code, on_worker.json()["errcode"]) == (404, "M_NOT_FOUND")
    assert unquarantined.status_code == 200
    assert again_on_main.content == again_on_worker.content == b"shared"
    assert deleted.json() == {"deleted_media": [media_id], "total": 1}
    assert gone_on_main.status_code == 404
    assert row is None
    assert not (tmp_path / "media" / "local" / media_id).exists()
