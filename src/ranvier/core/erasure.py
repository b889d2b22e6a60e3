"""Erased users' events as a reader is served them.

A user who deactivates with ``erase`` (the client-server API's
``/account/deactivate``) asks that whoever joins a room after the request
is served their events redacted, while those who could see the events
before still see them whole. A reader counts as having seen an event when
they were joined to the room at it: their membership at the event, as
:func:`ranvier.core.pagination.visible_with_memberships` works it out
(the state before the event, changed by the event itself when it is the
reader's own membership), is ``join``. Anyone else (one who joined later,
was invited, only peeks into a world-readable room, or has no membership
known at the event) gets the redacted form, by the room version's
redaction algorithm, as a redaction's is.

This is the one place that decides it: the readers that serve timeline
events to clients hand their events through :func:`erasure_applied` with
the reader's memberships, once history visibility has picked what the
reader may see at all. Federation applies its own form of the rule per
server (:mod:`ranvier.federation.queries`).

Push notifications and ``/notifications`` need none of it: the push
sender judges an event for the members the room has when it reaches the
event in the stream, as it is written, and ``/notifications`` lists only
events after the user's current join. The room's state (``/state``, the
state sections of ``/sync``) is served as held, as Synapse serves it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from ranvier.storage.erasure import ErasedEvent
from ranvier.storage.records import StoredEvent
from ranvier.storage.redactions import RedactedEvent

__all__ = ["ErasedEvent", "ErasedForms", "erasure_applied"]


class ErasedForms(Protocol):
    """The read of erased senders' events
    (:meth:`ranvier.storage.erasure.ErasureStorage.erased_forms`).
    """

    async def erased_forms(self, events: Sequence[StoredEvent]) -> Mapping[str, StoredEvent]:
        """The redacted form of each of ``events`` whose sender is erased, by event ID."""
        ...


async def erasure_applied(
    store: ErasedForms, events: Sequence[StoredEvent], memberships: Mapping[str, str]
) -> list[StoredEvent]:
    """``events`` as the reader whose membership at each is in
    ``memberships`` (by event ID) is served them: each of an erased sender
    at which the reader was not joined replaced by its redacted form, in
    the same order.

    Only events the reader was not joined at are looked up, so a member
    reading what came after their join costs nothing here; an event
    redacted already is redacted enough.
    """
    unjoined = [
        event
        for event in events
        if memberships.get(event.event_id) != "join" and not isinstance(event, RedactedEvent)
    ]
    if not unjoined:
        return list(events)
    forms = await store.erased_forms(unjoined)
    if not forms:
        return list(events)
    # ``forms`` holds events of ``unjoined`` alone.
    return [forms.get(event.event_id, event) for event in events]
