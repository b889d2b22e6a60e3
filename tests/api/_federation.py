"""Two test homeservers federating over loopback TLS, each called through
its client API, for the client API tests that cross servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import NamedTuple

import trio
from _client import Client, q

from ranvier.testing.homeserver import TestHomeserver, TestUser, open_test_homeserver
from ranvier.testing.network import Pki


class TwoServers(NamedTuple):
    """Servers A and B, their clients, Alice of A and Bob of B."""

    a: TestHomeserver
    b: TestHomeserver
    ca: Client
    cb: Client
    alice: TestUser
    bob: TestUser


@asynccontextmanager
async def two_servers(tmp_path: Path) -> AsyncIterator[TwoServers]:
    """A and B trusting one CA (under ``tmp_path``), with a user each."""
    pki = Pki.create(tmp_path)
    async with (
        open_test_homeserver(tmp_path / "a", federation=pki) as a,
        open_test_homeserver(tmp_path / "b", federation=pki) as b,
        a.client() as http_a,
        b.client() as http_b,
    ):
        alice, bob = await a.register_user("alice"), await b.register_user("bob")
        yield TwoServers(a, b, Client(a, http_a), Client(b, http_b), alice, bob)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until ``check`` holds, looking every 20 ms for at most 20 s:
    what one server sends reaches the other in its own time."""
    for _ in range(1000):
        if await check():
            return
        await trio.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


async def share_a_room(servers: TwoServers) -> str:
    """A public room of Alice's on A (alias ``#lobby``) that Bob of B has
    joined through its alias, with its state complete on B and his join
    seen on A; its ID."""
    a, b, ca, cb, alice, bob = servers
    room_id = await ca.create_room(alice, preset="public_chat", room_alias_name="lobby")
    await cb.ok(bob, "POST", f"/join/{q(f'#lobby:{a.server_name}')}", {})
    with trio.fail_after(20):
        await b.server.wait_for_full_state(room_id)

    async def joined_at_a() -> bool:
        members = await ca.ok(alice, "GET", f"/rooms/{q(room_id)}/joined_members")
        return bob.user_id in members["joined"]

    await eventually(joined_at_a, "Bob's join at A")
    return room_id
