"""Single sign-on across processes: the client's redirect served by a
client_reader worker, the provider's callback by the main process (the
``client_base_url``), the session passing between them in the database.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from pathlib import Path

import httpx
import msgspec
import trio
from _oidc_provider import CLIENT_ID, CLIENT_SECRET, FakeOidcProvider

from ranvier.config import ListenerConfig, OidcProviderConfig, ReplicationConfig, WorkerConfig
from ranvier.replication.worker import open_worker
from ranvier.testing.homeserver import TestHomeserver, config_for_tests, open_test_homeserver
from ranvier.testing.network import Pki, free_port

V3 = "/_matrix/client/v3"
CLIENT_URL = "https://client.example/app/"


async def test_a_login_started_on_a_worker_finishes_on_the_main_process(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    pki = Pki.create(tmp_path)
    idp = FakeOidcProvider()
    issuer = await idp.start(nursery, pki)
    client_port, replication_port = free_port(), free_port()
    base = config_for_tests(tmp_path / "main")
    main_config = msgspec.structs.replace(
        base,
        listeners=(
            ListenerConfig(type="client", host="127.0.0.1", port=client_port),
            ListenerConfig(type="replication", port=replication_port),
        ),
        replication=ReplicationConfig(shared_secret="a worker's secret", retry_for_seconds=30),
        well_known=msgspec.structs.replace(
            base.well_known, client_base_url=f"http://127.0.0.1:{client_port}"
        ),
        oidc_providers=(
            OidcProviderConfig(
                idp_id="test-idp",
                idp_name="Test IdP",
                issuer=issuer,
                client_id=CLIENT_ID,
                client_secret=CLIENT_SECRET,
                ca_file=pki.ca_file,
            ),
        ),
    )
    worker_config = msgspec.structs.replace(
        main_config,
        data_dir=tmp_path / "worker",
        signing_key_path=main_config.paths.signing_key,
        database=msgspec.structs.replace(main_config.database, path=main_config.paths.database),
        listeners=(ListenerConfig(type="client", port=0),),
        worker=WorkerConfig(main_replication_url=f"http://127.0.0.1:{replication_port}"),
    )
    async with (
        open_test_homeserver(tmp_path / "main", config=main_config) as main,
        open_worker(worker_config, "client_reader") as worker_server,
        httpx.AsyncClient(verify=pki.client_context(), timeout=60) as browser,
    ):
        worker = TestHomeserver(worker_server)
        assert worker.client_url != main.client_url
        redirect = await browser.get(
            f"{worker.client_url}{V3}/login/sso/redirect/test-idp",
            params={"redirectUrl": CLIENT_URL},
        )
        assert redirect.status_code == 302, redirect.text
        at_provider = await browser.get(redirect.headers["location"])
        assert at_provider.status_code == 302, at_provider.text
        callback = at_provider.headers["location"]
        assert callback.startswith(f"{main.client_url}/_ranvier/client/oidc/callback?")

        page = await browser.get(callback)
        assert page.status_code == 200, page.text
        (link,) = re.findall(r'<a href="([^"]*)">', page.text)
        (token,) = urllib.parse.parse_qs(urllib.parse.urlsplit(html.unescape(link)).query)[
            "loginToken"
        ]
        # Taken: the same callback is refused, here and on the worker.
        assert (await browser.get(callback)).status_code == 400
        on_worker = callback.replace(main.client_url, worker.client_url, 1)
        replayed = await browser.get(on_worker)
        assert replayed.status_code == 400
        assert "loginToken" not in replayed.text

        logged_in = await browser.post(
            f"{worker.client_url}{V3}/login", json={"type": "m.login.token", "token": token}
        )
        assert logged_in.status_code == 200, logged_in.text
        assert logged_in.json()["user_id"] == "@alice:localhost"
        assert idp.tokens_issued == 1
