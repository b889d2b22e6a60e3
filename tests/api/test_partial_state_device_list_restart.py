"""A device-list update made while a room's state is partial, missed by a
server the join's answer left out, reaches that server once the resync is
done even though the joining server restarted in between.

A holds the room and Elsie of C is in it; A leaves C out of the
``send_join`` answer and holds B's resync reads. Bob of B renames his
device (a device-list update, sent to A alone), B stops and starts again
on the same data, A lets the resync go, and the update reaches C.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import trio
from _federation import eventually

from ranvier.federation.server import SEND_PATH
from ranvier.testing.held_routes import RESYNC_READS, HeldRoutes
from ranvier.testing.homeserver import (
    RestartableHomeserver,
    federating_config,
    open_test_homeserver,
)
from ranvier.testing.network import Pki
from ranvier.web import Handler, Request, RouteMatch, Router

_SEND_JOIN = ("PUT", "/_matrix/federation/v2/send_join/{room_id}/{event_id}")
_UPDATE = "m.device_list_update"


class _Resident(HeldRoutes):
    """A's routes: the resync reads held, ``hidden`` servers left out of
    ``send_join``'s ``servers_in_room``.
    """

    def __init__(self, inner: Router, hidden: str) -> None:
        super().__init__(inner, RESYNC_READS)
        self._hidden = hidden

    def match(self, method: str, path: str) -> RouteMatch:
        found = super().match(method, path)
        if (found.route.method, found.route.pattern) != _SEND_JOIN:
            return found
        handler = found.route.handler

        async def hiding(request: Request) -> Any:
            answer = await handler(request)
            assert isinstance(answer, dict)
            answer["servers_in_room"] = [
                server for server in answer.get("servers_in_room", []) if server != self._hidden
            ]
            return answer

        return RouteMatch(dataclasses.replace(found.route, handler=hiding), found.params)


class _Listening(Router):
    """C's routes, noting the device-list updates that arrive."""

    def __init__(self, inner: Router) -> None:
        super().__init__()
        self._inner = inner
        self.updates: list[dict[str, Any]] = []

    def match(self, method: str, path: str) -> RouteMatch:
        found = self._inner.match(method, path)
        if (found.route.method, found.route.pattern) != ("PUT", SEND_PATH):
            return found
        return RouteMatch(
            dataclasses.replace(found.route, handler=self._noting(found.route.handler)),
            found.params,
        )

    def _noting(self, handler: Handler) -> Handler:
        async def noting(request: Request) -> Any:
            answer = await handler(request)
            for edu in (request.content or {}).get("edus", []):
                if edu.get("edu_type") == _UPDATE:
                    self.updates.append(edu["content"])
            return answer

        return noting


async def test_a_missed_device_list_update_reaches_its_server_after_a_restart_mid_resync(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    pki = Pki.create(tmp_path)
    server_b = RestartableHomeserver(nursery, federating_config(tmp_path, pki, "b"))
    async with (
        open_test_homeserver(tmp_path / "a", federation=pki) as a,
        open_test_homeserver(tmp_path / "c", federation=pki) as c,
    ):
        alice = await a.register_user("alice")
        elsie = await c.register_user("elsie")
        # Named, so that A's partial answer leaves every member out but the joiner.
        room_id = await a.server.create_room(alice.user_id, preset="public_chat", name="partial")
        await c.server.join_room(elsie.user_id, room_id, [a.server_name])
        at_a = _Resident(a.server.federation_app.router, hidden=c.server_name)
        a.server.federation_app.router = at_a
        at_c = _Listening(c.server.federation_app.router)
        c.server.federation_app.router = at_c

        b = await server_b.start()
        bob = await b.accounts.register("bob", None)
        assert bob.device_id is not None
        await b.join_room(bob.user_id, room_id, [a.server_name])
        assert await b.storage.is_partial_state_room(room_id)
        with trio.fail_after(20):
            await at_a.first_held.wait()

        await b.e2e_keys.device_renamed(bob.user_id, bob.device_id)
        (remembered,) = await b.storage.partial_state_device_updates.remembered(room_id)
        assert a.server_name in remembered.sent_to
        assert c.server_name not in remembered.sent_to
        ((edu_type, update),) = remembered.edus
        assert (edu_type, update["user_id"]) == (_UPDATE, bob.user_id)
        missed = update["stream_id"]

        await server_b.stop()
        b = await server_b.start()
        assert await b.storage.is_partial_state_room(room_id)
        assert not at_c.updates
        at_a.released.set()
        with trio.fail_after(20):
            await b.wait_for_full_state(room_id)

        async def arrived() -> bool:
            return any(update["stream_id"] == missed for update in at_c.updates)

        await eventually(arrived, "the missed update at C")
        assert at_c.updates[0]["user_id"] == bob.user_id
        assert await b.storage.partial_state_device_updates.remembered(room_id) == []
        await server_b.stop()
