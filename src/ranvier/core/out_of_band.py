"""Memberships of our users in rooms this server is not in.

A user of ours invited to another server's room, or knocking on one, is
not in it: this server holds that one membership event, an outlier ("out
of band"), and nothing of the room's DAG. When the room's side answers
with a leave (an invite withdrawn by the inviter, a knock refused by a
kick) or a ban, the resident sends that event here (the target's server
is told of a membership taking its user out of the room, see
:class:`~ranvier.core.room_servers.RoomEventSender`). Ingestion cannot take
it as a room event: it would need the state before it, which a server
outside the room may not have. So it is kept as an outlier beside the
invite or knock, and ``/sync``, which reads our users' newest membership
(:mod:`ranvier.storage.local_memberships`), moves the room to ``leave``.

:class:`OutOfBandMemberships` takes such an event, once its signatures
and content hash are checked (as for any PDU), when all of these hold:

* it is an ``m.room.member`` event about a user of this server, with
  membership ``leave`` or ``ban``;
* no user of ours is in the room: it has no DAG here (no forward
  extremities), or what we hold of it stops where our last user left;
* the user's latest membership here is an outlier ``invite`` or
  ``knock``, and the event cites that membership in its ``auth_events``,
  as the auth rules make every membership change cite the target's
  current membership. So it answers that very invite or knock: an old
  leave replayed, or one from a branch of the room that never saw the
  invite, is not taken;
* an invite is answered by its inviter only (or by the invitee, whose
  events only this server signs). Who else may take an invite back (a
  moderator with the power to kick) is a question of the room's state,
  which this server does not hold; and the event ID cited is no secret:
  any server that saw the invite could otherwise make it vanish from its
  invitee's view;
* a knock is answered by the server it was sent through (recorded with
  the knock, see :mod:`ranvier.core.knocks`), the one server this server
  has seen speak for the room: the answer must come from it (the
  transaction's origin) and be signed by it (its sender is one of its
  users, whose server's signature ingestion has checked), or be the
  knocker's own leave. The knock's event ID is as public as an invite's,
  and any server that knows the room could otherwise refuse the knock in
  the room's name. A refusal by a moderator of a third server, which
  that server sends here itself, is not taken either: nothing here tells
  that server is in the room. The knocker still sees the knock and may
  withdraw it. A knock kept before its server was recorded is answered by
  the knocker alone.

An event of that shape that does not meet these, while the user's
membership is such an invite or knock, is refused (403 ``M_FORBIDDEN``,
saying why) and nothing of it is written: taken the ordinary way, it
would have this server fetch the room's events from its sender.

Nothing else of a room we are not in is taken here: any other event goes
the ordinary way, which needs the state before it from the server that
sent it, and a server answers that only to a server in the room.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Set
from typing import Final, Protocol

from ranvier.errors import MatrixError
from ranvier.protocol.events import Pdu
from ranvier.storage.records import StoredEvent

from .context import out_of_band_to_persist
from .interfaces import EventPersister

__all__ = ["MembershipReader", "OutOfBandMemberships", "OutOfBandStore"]

_log: Final = logging.getLogger(__name__)

_MEMBER: Final = "m.room.member"
#: The memberships a room's side answers an invite or a knock with.
_ANSWERS: Final = frozenset({"leave", "ban"})
#: The out-of-band memberships an answer may follow.
_PENDING: Final = frozenset({"invite", "knock"})


class OutOfBandStore(Protocol):
    """The reads of the room's DAG and events (storage)."""

    async def get_forward_extremities(self, room_id: str) -> Set[str]: ...

    async def get_events(self, event_ids: Collection[str]) -> Mapping[str, StoredEvent]: ...


class MembershipReader(Protocol):
    """:class:`ranvier.storage.room_members.RoomMemberStorage`'s reads."""

    async def get_latest_membership_event_id(self, user_id: str, room_id: str) -> str | None: ...

    async def server_has_joined_member(self, room_id: str, server_name: str) -> bool: ...

    async def get_knock_server(self, event_id: str) -> str | None: ...


class OutOfBandMemberships:
    """Takes the answers to our users' invites and knocks in rooms we are
    not in, as the module says.
    """

    def __init__(
        self,
        *,
        server_name: str,
        store: OutOfBandStore,
        memberships: MembershipReader,
        persister: EventPersister,
    ) -> None:
        self._server_name = server_name
        self._store = store
        self._memberships = memberships
        self._persister = persister

    def may_answer(self, event: Pdu) -> bool:
        """Whether ``event`` has the shape of an answer (read from it alone:
        a membership of leave or ban about one of our users), the cheap
        look taken before anything is read.
        """
        return (
            event.type == _MEMBER
            and event.state_key is not None
            and event.state_key.partition(":")[2] == self._server_name
            and event.membership in _ANSWERS
        )

    async def room_not_here(self, room_id: str) -> bool:
        """Whether no user of ours is in the room: none of its DAG is held
        here, or none of our users is joined in what is (the room was left,
        and the room's events no longer reach us).
        """
        if not await self._store.get_forward_extremities(room_id):
            return True
        return not await self._memberships.server_has_joined_member(room_id, self._server_name)

    async def take(self, origin: str, event: Pdu) -> bool:
        """Keep ``event``, whose signatures and hash were checked, as an
        outlier if it answers the user's pending invite or knock; whether
        it was kept (or was already). False for an event that does not
        have the shape of an answer or meets no pending membership.

        Raises :class:`~ranvier.errors.MatrixError` (403) for one that
        meets a pending invite or knock and does not answer it as the
        module says: nothing is written.
        """
        if not self.may_answer(event) or not await self.room_not_here(event.room_id):
            return False
        assert event.state_key is not None
        latest_id = await self._memberships.get_latest_membership_event_id(
            event.state_key, event.room_id
        )
        if latest_id == event.event_id:
            return True
        if latest_id is None:
            return False
        latest = (await self._store.get_events([latest_id])).get(latest_id)
        if latest is None or not latest.outlier:
            return False
        pending = Pdu.from_json(latest.json, event.room_version, check_limits=False)
        if pending.membership not in _PENDING:
            return False
        refusal = await self._refusal(origin, event, pending)
        if refusal is not None:
            _log.info("%s from %s is not taken: %s", event.event_id, origin, refusal)
            raise MatrixError(refusal, errcode="M_FORBIDDEN", http_status=403)
        await self._persister.persist_events([out_of_band_to_persist(event)])
        _log.info(
            "%s from %s answers the %s of %s in %s, a room not joined here",
            event.event_id,
            origin,
            pending.membership,
            event.state_key,
            event.room_id,
        )
        return True

    async def _refusal(self, origin: str, event: Pdu, pending: Pdu) -> str | None:
        """Why ``event`` does not answer ``pending``, the user's pending
        invite or knock; None when it does."""
        user_id = event.state_key
        what = f"the {pending.membership} of {user_id} in {event.room_id}"
        if pending.event_id not in event.auth_event_ids:
            return (
                f"{event.event_id} does not cite {what} ({pending.event_id}) as the prior"
                " membership it changes"
            )
        if event.sender == user_id:
            return None
        if pending.membership == "invite":
            if event.sender == pending.sender:
                return None
            return f"{what} came from {pending.sender}, and only they may take it back"
        through = await self._memberships.get_knock_server(pending.event_id)
        if through is None:
            return f"{what} has no record of the server it was made through"
        if origin != through:
            return f"{what} was made through {through}, and {origin} cannot refuse it"
        sender_server = event.sender.partition(":")[2]
        if sender_server != through:
            return (
                f"{what} was made through {through}, but {event.sender} of {sender_server}"
                " refuses it"
            )
        return None
