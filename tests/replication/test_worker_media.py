"""Media through a client_reader worker sharing the main process's media
store: rows written by the main process's storage actor, files by
whichever process took the upload, served by either."""

from __future__ import annotations

import io
from pathlib import Path

from _worker_configs import main_and_worker_configs
from PIL import Image

from ranvier.config import MediaConfig
from ranvier.replication.worker import open_worker
from ranvier.testing.homeserver import TestHomeserver, open_test_homeserver

MEDIA = "/_matrix/media/v3"
AUTHED = "/_matrix/client/v1/media"


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 300), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_media_uploaded_through_a_worker_is_served_by_both(tmp_path: Path) -> None:
    main_config, worker_config = main_and_worker_configs(
        tmp_path, media=MediaConfig(store_path=tmp_path / "media")
    )
    async with open_test_homeserver(tmp_path / "main", config=main_config) as main:
        alice = await main.register_user("alice")
        async with (
            open_worker(worker_config, "client_reader") as worker,
            TestHomeserver(worker).client(alice) as on_worker,
            main.client(alice) as on_main,
        ):
            uploaded = await on_worker.post(
                f"{MEDIA}/upload",
                content=_png(),
                headers={"Content-Type": "image/png"},
                params={"filename": "p.png"},
            )
            path = uploaded.json()["content_uri"].removeprefix("mxc://")
            from_main = await on_main.get(f"{AUTHED}/download/{path}")
            thumbnail = await on_worker.get(
                f"{AUTHED}/thumbnail/{path}", params={"width": 32, "height": 32, "method": "crop"}
            )
            # Created on the main process, uploaded through the worker once.
            created = await on_main.post("/_matrix/media/v1/create")
            later = created.json()["content_uri"].removeprefix("mxc://")
            first = await on_worker.put(f"{MEDIA}/upload/{later}", content=b"later")
            again = await on_worker.put(f"{MEDIA}/upload/{later}", content=b"again")
            served = await on_main.get(f"{AUTHED}/download/{later}")
            row = await main.server.storage.media.media(*later.split("/"))

    assert from_main.status_code == 200
    assert from_main.content == _png()
    assert from_main.headers["content-disposition"] == 'inline; filename="p.png"'
    assert thumbnail.status_code == 200
    with Image.open(io.BytesIO(thumbnail.content)) as picture:
        assert picture.size == (32, 32)
    assert first.status_code == 200
    assert (again.status_code, again.json()["errcode"]) == (409, "M_CANNOT_OVERWRITE_MEDIA")
    assert served.content == b"later"
    assert row is not None
    assert (row.user_id, row.size) == (alice.user_id, 5)
