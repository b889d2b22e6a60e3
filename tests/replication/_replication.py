"""What the replication tests share: the main process's side and a worker's."""

from __future__ import annotations

from dataclasses import dataclass

from ranvier.core import compute_event_context, event_to_persist
from ranvier.protocol.events import Pdu
from ranvier.protocol.signing import generate_signing_key
from ranvier.replication.client import ReplicationClient, ReplicationEventPersister
from ranvier.replication.server import ReplicationApp
from ranvier.storage import EventToPersist, Storage
from ranvier.testing import RoomBuilder

SECRET = "correct horse battery staple"
ALICE = "@alice:ours.test"
BOB = "@bob:remote.test"


def shared_room() -> RoomBuilder:
    """A public room of Alice's, on this side, that Bob, of another server, joined."""
    keys = {server: generate_signing_key("k1") for server in ("ours.test", "remote.test")}
    room = RoomBuilder(creator=ALICE, keys=keys)
    room.public_room(BOB)
    return room


@dataclass
class Main:
    """The main process's side: its storage, and the replication app on a
    real listener on loopback."""

    storage: Storage
    app: ReplicationApp
    url: str


@dataclass
class Worker:
    """A worker's side: storage reading the same file, writing through the
    main process."""

    client: ReplicationClient
    storage: Storage

    def persister(self, kind: str) -> ReplicationEventPersister:
        assert kind in ("federation", "client")
        return ReplicationEventPersister(
            self.client,
            self.storage,
            kind="federation" if kind == "federation" else "client",
        )

    async def with_partial_state(self, room: RoomBuilder, event: Pdu) -> EventToPersist:
        """``event`` ready to write, its context computed with partial state
        from the state before it that ``room`` knows, its state groups
        written through the main process."""
        context = await compute_event_context(
            event,
            self.storage,
            self.persister("federation"),
            state_ids_before=room.state_before(event.event_id),
            partial_state=True,
        )
        return event_to_persist(event, context)


def worker_client(url: str, *, retry_for_seconds: float = 10.0) -> ReplicationClient:
    return ReplicationClient(
        url,
        shared_secret=SECRET,
        retry_for_seconds=retry_for_seconds,
        backoff_base_seconds=0.01,
        backoff_cap_seconds=0.2,
    )
