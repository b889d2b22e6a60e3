from __future__ import annotations

from pathlib import Path

import msgspec

from ranvier.core import EventPersister, StateReader
from ranvier.storage import EventStateContext, EventToPersist, Storage


def test_storage_is_what_core_talks_to(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "unused.db")
    # Checked statically by mypy: storage has every method, typed as core needs.
    reader: StateReader = storage
    persister: EventPersister = storage
    assert isinstance(reader, StateReader)
    assert isinstance(persister, EventPersister)
    assert not isinstance(object(), StateReader)
    assert not isinstance(object(), EventPersister)


def test_what_the_persister_takes_crosses_a_process_boundary() -> None:
    record = EventToPersist(
        event_id="$e",
        room_id="!r:example.org",
        room_version="10",
        type="m.room.topic",
        state_key="",
        sender="@a:example.org",
        depth=3,
        origin_server_ts=1,
        json=b'{"type":"m.room.topic"}',
        prev_event_ids=("$p",),
        auth_event_ids=("$a",),
        context=EventStateContext(state_group_before=4, partial_state=True),
    )
    delta = {("m.room.member", "@a:example.org"): "$e", ("m.room.topic", ""): None}
    wire = msgspec.msgpack.encode([[record], delta])
    records, decoded_delta = msgspec.msgpack.decode(
        wire,
        type=tuple[list[EventToPersist], dict[tuple[str, str], str | None]],
    )
    assert records == [record]
    assert decoded_delta == delta
