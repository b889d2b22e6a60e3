"""E-mail addresses across processes: a client_reader worker sends the
mail itself and writes the session through the main process; the token
is taken by the main process (where the mail's link leads), and the
address added, and then used to reset the password, on the worker."""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec
import trio
from _email import BASE_URL, mailing_homeserver, read_mail

from ranvier.config import ListenerConfig, ReplicationConfig, WorkerConfig
from ranvier.replication.worker import open_worker
from ranvier.testing.homeserver import TestHomeserver
from ranvier.testing.network import free_port

V3 = "/_matrix/client/v3"
PASSWORD = "correct horse"


async def test_an_address_added_and_used_through_a_worker(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    replication_port = free_port()
    async with mailing_homeserver(
        tmp_path,
        nursery,
        extra_listeners=(ListenerConfig(type="replication", port=replication_port),),
        replication=ReplicationConfig(shared_secret="a worker's secret", retry_for_seconds=30),
    ) as (main, smtp):
        config = main.server.config
        worker_config = msgspec.structs.replace(
            config,
            data_dir=tmp_path / "worker",
            signing_key_path=config.paths.signing_key,
            database=msgspec.structs.replace(config.database, path=config.paths.database),
            listeners=(ListenerConfig(type="client", port=0),),
            worker=WorkerConfig(main_replication_url=f"http://127.0.0.1:{replication_port}"),
        )
        alice = await main.register_user("alice", PASSWORD)
        async with (
            open_worker(worker_config, "client_reader") as worker_server,
            httpx.AsyncClient(base_url=TestHomeserver(worker_server).client_url, timeout=60) as w,
            main.client(timeout=60) as m,
        ):
            body = {"client_secret": "s3cret", "email": "alice@example.org", "send_attempt": 1}
            requested = await w.post(f"{V3}/account/3pid/email/requestToken", json=body)
            assert requested.status_code == 200, requested.text
            sid = requested.json()["sid"]
            mailed = read_mail(await smtp.next())
            assert mailed.sid == sid
            assert mailed.link.startswith(BASE_URL)
            # The repeat is answered from the session the main process wrote.
            again = await w.post(f"{V3}/account/3pid/email/requestToken", json=body)
            assert again.json()["sid"] == sid
            assert smtp.received == []
            page = await m.get(mailed.local_link)
            assert page.status_code == 200, page.text
            auth = {"type": "m.login.password", "password": PASSWORD, "user": "alice"}
            added = await w.post(
                f"{V3}/account/3pid/add",
                json={"sid": sid, "client_secret": "s3cret", "auth": auth},
                headers={"Authorization": f"Bearer {alice.access_token}"},
            )
            assert added.status_code == 200, added.text
            listed = await m.get(
                f"{V3}/account/3pid", headers={"Authorization": f"Bearer {alice.access_token}"}
            )
            assert [t["address"] for t in listed.json()["threepids"]] == ["alice@example.org"]

            body = {"client_secret": "reset", "email": "alice@example.org", "send_attempt": 1}
            requested = await w.post(f"{V3}/account/password/email/requestToken", json=body)
            assert requested.status_code == 200, requested.text
            mailed = read_mail(await smtp.next())
            submitted = await w.post(
                "/_ranvier/client/email/submit_token",
                json={"sid": mailed.sid, "client_secret": "reset", "token": mailed.token},
            )
            assert submitted.json() == {"success": True}
            creds = {"sid": mailed.sid, "client_secret": "reset"}
            reset = await w.post(
                f"{V3}/account/password",
                json={
                    "new_password": "battery staple",
                    "auth": {"type": "m.login.email.identity", "threepid_creds": creds},
                },
            )
            assert reset.status_code == 200, reset.text
            # Logged out on the main process too, which heard of it.
            whoami = await m.get(
                f"{V3}/account/whoami", headers={"Authorization": f"Bearer {alice.access_token}"}
            )
            assert whoami.status_code == 401
            identifier = {
                "type": "m.id.thirdparty",
                "medium": "email",
                "address": "alice@example.org",
            }
            login = await m.post(
                f"{V3}/login",
                json={
                    "type": "m.login.password",
                    "identifier": identifier,
                    "password": "battery staple",
                },
            )
            assert login.status_code == 200, login.text
