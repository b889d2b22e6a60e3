"""``unsigned.replaces_state`` and ``unsigned.prev_content``: what a state
event served to a client replaced.

Clients render a state event against the one before it ("changed their
display name from A to B", "changed the topic", an invite accepted rather
than a fresh join), so every endpoint that serves events adds both to the
state events it serves, from what storage recorded when the event was
written (:mod:`ranvier.storage.replaced_state`), in one read per batch of
events and none for a batch without state events.

Who sees what:

* ``replaces_state`` (spec v1.19) goes with every state event that
  replaced an entry, whatever the history visibility, as the spec says.
* ``prev_content`` goes with it whenever the replaced event is stored,
  redacted if a redaction applies to it. The spec gives it where "the
  client has permission to see the previous event"; the replaced event is
  the entry of the room's state at the event served, and a reader shown an
  event may read the state at it (the state of a ``/sync`` timeline or of
  ``/context``, the members ``/messages`` lazy-loads), so being shown the
  event is that permission. Synapse serves it the same way. Holding each
  replaced event to the timeline's per-event rule instead would drop it
  from the commonest case, a member's profile change in a room whose
  history is ``joined``, made after the reader joined: the member's
  earlier event predates the reader's join, though the reader was sent it
  as state then, and the change would read as a fresh join.
* Outliers have nothing recorded (an invite from another server, a leave
  declining it), so they carry neither, as in Synapse.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any, Protocol

from ranvier.storage.records import ReplacedState, StoredEvent

from .client_events import event_content

__all__ = ["ReplacedStateSource", "replaced_unsigned", "with_replaced"]


class ReplacedStateSource(Protocol):
    """Storage's record of replaced state entries
    (:meth:`ranvier.storage.sync_reads.SyncReads.get_replaced_state`).
    """

    async def get_replaced_state(
        self, event_ids: Collection[str]
    ) -> Mapping[str, ReplacedState]: ...


async def replaced_unsigned(
    source: ReplacedStateSource, events: Iterable[StoredEvent]
) -> dict[str, dict[str, Any]]:
    """The ``replaces_state`` and ``prev_content`` of each of ``events``
    that replaced a state entry, by event ID; no read at all when none of
    them is a state event of the DAG.
    """
    wanted = [
        event.event_id for event in events if event.state_key is not None and not event.outlier
    ]
    if not wanted:
        return {}
    found = await source.get_replaced_state(wanted)
    return {event_id: _unsigned(replaced) for event_id, replaced in found.items()}


def _unsigned(replaced: ReplacedState) -> dict[str, Any]:
    unsigned: dict[str, Any] = {"replaces_state": replaced.event_id}
    if replaced.event is not None:
        unsigned["prev_content"] = event_content(replaced.event)
    return unsigned


def with_replaced(
    replaced: Mapping[str, Mapping[str, Any]], event_id: str, unsigned: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """``unsigned`` with what ``event_id`` replaced (from :func:`replaced_unsigned`)."""
    extra = replaced.get(event_id)
    if extra is None:
        return None if unsigned is None else dict(unsigned)
    return {**extra, **(unsigned or {})}
