"""A device-list update a client_reader worker sends while a room's state
is partial is remembered in the shared database, so that the main process,
which completes the resync, sends it to the server the partial state left
out.

A holds the room and Elsie of C is in it; A leaves C out of the
``send_join`` answer and holds B's resync reads. Bob of B (the main
process) joins, renames his device through the worker (whose sender sends
the update to A alone), A lets the resync go, and the update reaches C.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import trio
from _worker_configs import main_and_worker_configs

from ranvier.federation.server import SEND_PATH
from ranvier.replication.worker import open_worker
from ranvier.testing import Pki
from ranvier.testing.held_routes import RESYNC_READS, HeldRoutes
from ranvier.testing.homeserver import TestHomeserver, open_test_homeserver
from ranvier.web import Request, RouteMatch, Router

_SEND_JOIN = ("PUT", "/_matrix/federation/v2/send_join/{room_id}/{event_id}")
_UPDATE = "m.device_list_update"


class _Watched(HeldRoutes):
    """A server's routes: what ``held_routes`` names held, ``hidden``
    servers left out of ``send_join``'s ``servers_in_room``, and the
    device-list updates that arrive noted.
    """

    def __init__(self, inner: Router, held_routes: frozenset[tuple[str, str]], hidden: str) -> None:
        super().__init__(inner, held_routes)
        self._hidden = hidden
        self.updates: list[dict[str, Any]] = []
        self.arrived = trio.Event()

    def match(self, method: str, path: str) -> RouteMatch:
        found = super().match(method, path)
        key = (found.route.method, found.route.pattern)
        handler = found.route.handler

        async def hiding(request: Request) -> Any:
            answer = await handler(request)
            assert isinstance(answer, dict)
            answer["servers_in_room"] = [
                server for server in answer.get("servers_in_room", []) if server != self._hidden
            ]
            return answer

        async def noting(request: Request) -> Any:
            answer = await handler(request)
            for edu in (request.content or {}).get("edus", []):
                if edu.get("edu_type") == _UPDATE:
                    self.updates.append(edu["content"])
                    self.arrived.set()
                    self.arrived = trio.Event()
            return answer

        wrapped = {_SEND_JOIN: hiding, ("PUT", SEND_PATH): noting}.get(key)
        if wrapped is None:
            return found
        return RouteMatch(dataclasses.replace(found.route, handler=wrapped), found.params)


async def test_an_update_a_worker_sent_on_partial_state_reaches_a_left_out_server(
    tmp_path: Path,
) -> None:
    pki = Pki.create(tmp_path)
    main_config, worker_config = main_and_worker_configs(tmp_path, pki=pki)
    async with (
        open_test_homeserver(tmp_path / "a", federation=pki) as a,
        open_test_homeserver(tmp_path / "c", federation=pki) as c,
        open_test_homeserver(tmp_path / "main", config=main_config) as b,
    ):
        alice = await a.register_user("alice")
        elsie = await c.register_user("elsie")
        room_id = await a.server.create_room(alice.user_id, preset="public_chat", name="partial")
        await c.server.join_room(elsie.user_id, room_id, [a.server_name])
        at_a = _Watched(a.server.federation_app.router, RESYNC_READS, hidden=c.server_name)
        a.server.federation_app.router = at_a
        at_c = _Watched(c.server.federation_app.router, frozenset(), hidden="")
        c.server.federation_app.router = at_c
        bob = await b.register_user("bob")
        await b.server.join_room(bob.user_id, room_id, [a.server_name])
        assert await b.server.storage.is_partial_state_room(room_id)

        async with (
            open_worker(worker_config, "client_reader") as worker,
            TestHomeserver(worker).client(bob) as bob_on_worker,
        ):
            renamed = await bob_on_worker.put(
                f"/_matrix/client/v3/devices/{bob.device_id}", json={"display_name": "phone"}
            )
            assert renamed.status_code == 200, renamed.text
            # The worker remembered it in the shared database, through the
            # main process's writer.
            (remembered,) = await b.server.storage.partial_state_device_updates.remembered(room_id)
            assert c.server_name not in remembered.sent_to
            missed = remembered.edus[0][1]["stream_id"]
            assert not at_c.updates

            at_a.released.set()
            with trio.fail_after(20):
                await b.server.wait_for_full_state(room_id)
                while not any(update["stream_id"] == missed for update in at_c.updates):
                    await at_c.arrived.wait()
        assert at_c.updates[0]["user_id"] == bob.user_id
        assert await b.server.storage.partial_state_device_updates.remembered(room_id) == []
