"""Helpers for testing code built on ranvier, and for ranvier's own tests.

Everything here is real ranvier underneath: rooms of real PDUs, storage
written through core, federation over real HTTPS on loopback. What stands
in is only what a test cannot have: other homeservers, DNS, a public CA,
fetched keys and the passing of time.

* :mod:`~ranvier.testing.rooms`: :class:`RoomBuilder`, rooms built event by
  event for any room version, signed or with placeholder hashes;
* :mod:`~ranvier.testing.ingest`: :func:`ingest`, :func:`ingest_all`, events
  written into storage as core writes them;
* :mod:`~ranvier.testing.keys`: :class:`KnownKeys`, other servers' keys
  known in advance;
* :mod:`~ranvier.testing.network`: :class:`Pki`, :class:`ZoneDns`,
  :func:`serve`, HTTPS on loopback under made-up names;
* :mod:`~ranvier.testing.remote`: :class:`RemoteHomeserver` and
  :class:`RemoteRooms`, other homeservers that hold rooms, answer reads and
  send transactions;
* :mod:`~ranvier.testing.clocks`: :data:`NOW_MS` and :func:`ticking_clock`.
* :mod:`~ranvier.testing.push_gateway`: :class:`FakePushGateway`, a push
  gateway over HTTPS on loopback that records the notifications it gets.
* :mod:`~ranvier.testing.smtp`: :class:`FakeSmtpServer`, an SMTP server on
  loopback (STARTTLS, AUTH) that keeps the mails it takes.
* :mod:`~ranvier.testing.homeserver`: :func:`open_test_homeserver`, a whole
  homeserver in the test process, started in milliseconds, with
  :class:`TestHomeserver` and :class:`TestUser`; as a pytest fixture in
  :mod:`~ranvier.testing.pytest_plugin` (docs/testing.md).

With pytest-trio (``trio_mode = true``), a test of a server receiving a
room's events from another::

    import trio
    from ranvier.storage import Storage
    from ranvier.testing import RoomBuilder, ingest_all


    async def test_room_is_stored(tmp_path, nursery: trio.Nursery) -> None:
        storage = Storage(tmp_path / "test.db")
        await nursery.start(storage.run)
        room = RoomBuilder("12", "@alice:example.org")
        room.public_room("@bob:example.org")
        await ingest_all(storage, room.order)
        assert await storage.get_current_state_ids(room.room_id) == room.state

pytest is not needed by any of it. :class:`Pki` needs ``trustme``, which
ranvier's ``test`` extra installs.
"""

from .clocks import NOW_MS, ticking_clock
from .homeserver import TestHomeserver, TestUser, config_for_tests, open_test_homeserver
from .ingest import EventStore, ingest, ingest_all
from .keys import FOREVER, KnownKeys
from .network import LOOPBACK_NAMES, Pki, ZoneDns, free_port, serve, silent_server
from .remote import Canned, RemoteHomeserver, RemoteRooms, Seen
from .rooms import RoomBuilder, SendOptions, make_pdu, server_of

__all__ = [
    "FOREVER",
    "LOOPBACK_NAMES",
    "NOW_MS",
    "Canned",
    "EventStore",
    "KnownKeys",
    "Pki",
    "RemoteHomeserver",
    "RemoteRooms",
    "RoomBuilder",
    "Seen",
    "SendOptions",
    "TestHomeserver",
    "TestUser",
    "ZoneDns",
    "config_for_tests",
    "free_port",
    "ingest",
    "ingest_all",
    "make_pdu",
    "open_test_homeserver",
    "serve",
    "server_of",
    "silent_server",
    "ticking_clock",
]
