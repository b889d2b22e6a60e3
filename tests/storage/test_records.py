import msgspec
import pytest

from ranvier.errors import BadJsonError
from ranvier.storage import EventStateContext, EventToPersist


def _event(**overrides: object) -> EventToPersist:
    fields: dict[str, object] = {
        "event_id": "$e",
        "room_id": "!r:example.org",
        "room_version": "10",
        "type": "m.room.member",
        "state_key": "@a:example.org",
        "sender": "@a:example.org",
        "depth": 3,
        "origin_server_ts": 5,
        "json": b"{}",
        "context": EventStateContext(state_group_before=1),
    }
    fields.update(overrides)
    return EventToPersist(**fields)  # type: ignore[arg-type]


def test_outliers_have_no_context_and_others_need_one() -> None:
    with pytest.raises(BadJsonError, match="an outlier has no state context"):
        _event(outlier=True)
    with pytest.raises(BadJsonError, match="needs a state context"):
        _event(context=None)
    with pytest.raises(BadJsonError, match="needs an event ID"):
        _event(event_id="")
    assert _event(outlier=True, context=None).outlier


@pytest.mark.parametrize(
    ("overrides", "accepted"),
    [
        ({}, True),
        ({"rejected_reason": "auth"}, False),
        ({"soft_failed": True}, False),
        ({"outlier": True, "context": None}, False),
    ],
)
def test_which_events_move_the_room(overrides: dict[str, object], accepted: bool) -> None:
    assert _event(**overrides).accepted is accepted


def test_state_events_are_told_by_their_state_key() -> None:
    assert _event().is_state
    assert not _event(state_key=None, type="m.room.message").is_state
    assert _event(state_key="").is_state


def test_an_event_to_persist_survives_the_wire() -> None:
    """A worker sends these to the event persister as they are."""
    event = _event(
        prev_event_ids=("$p",),
        json=b'{"content":{}}',
        context=EventStateContext(state_group_before=1, state_group_after=2, partial_state=True),
    )
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(event), type=EventToPersist) == event
    with pytest.raises(BadJsonError, match="needs a state context"):
        msgspec.json.decode(
            msgspec.json.encode(_event()).replace(b'"context":{', b'"ctx":{'),
            type=EventToPersist,
        )
