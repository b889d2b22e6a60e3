"""The federation directory query, ``GET /_matrix/federation/v1/query/directory``,
between two homeservers over loopback TLS: answered for the server's own
aliases, 404 for any other, 400 without an alias.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ranvier.federation.directory import DIRECTORY_PATH
from ranvier.federation.transport.client import FederationRequestError
from ranvier.testing.homeserver import open_test_homeserver
from ranvier.testing.network import Pki

ALIAS_QUERY = "room_alias"


async def test_the_directory_query_is_answered_for_local_aliases_only(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    async with (
        open_test_homeserver(tmp_path / "a", federation=pki) as a,
        open_test_homeserver(tmp_path / "b", federation=pki) as b,
    ):
        alice = (await a.register_user("alice")).user_id
        room_id = await a.server.create_room(alice)
        alias = f"#here:{a.server_name}"
        await a.server.room_directory.create_alias(alice, alias, room_id)
        client = b.server.federation_client
        answer = await client.get_json(a.server_name, DIRECTORY_PATH, query={ALIAS_QUERY: alias})
        assert answer == {"room_id": room_id, "servers": [a.server_name]}
        # B's directory client reads the same answer.
        resolved = await b.server.room_directory.resolve(alias)
        assert (resolved.room_id, resolved.servers) == (room_id, (a.server_name,))
        for other in (f"#here:{b.server_name}", "#x:example.org", f"#nothing:{a.server_name}"):
            with pytest.raises(FederationRequestError) as caught:
                await client.get_json(a.server_name, DIRECTORY_PATH, query={ALIAS_QUERY: other})
            assert (caught.value.status, caught.value.errcode) == (404, "M_NOT_FOUND")
        with pytest.raises(FederationRequestError) as caught:
            await client.get_json(a.server_name, DIRECTORY_PATH)
        assert (caught.value.status, caught.value.errcode) == (400, "M_MISSING_PARAM")
