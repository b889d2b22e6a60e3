"""Leaving a room for a local user, including one this server is not in.

A room this server is in is left here (:meth:`EventCreator.leave`). A user
invited from another server to a room no user of ours is in holds only the
invite (an outlier), newer than anything the room's state here says when
this server was in the room before; declining it goes through a server in the room, as
the spec's ``make_leave`` and ``send_leave`` handshake: that server makes
a leave template, we sign it, and it takes the leave into the room. The
leave is then kept here as an outlier beside the invite, so that this
server, too, knows the user is no longer invited. A knock on a room no
user of ours is in (:mod:`ranvier.core.knocks`) is withdrawn the same way,
through the servers its room's server named in its answer to the knock.

When none of those servers gives a leave template (each cannot be
reached, is no longer in the room, as an inviter's server whose users all
left is not, or refuses, as one that withdrew the invite meanwhile or that
means to hold the user to it does), the user is not held to the invite or
knock: the leave is made here, on that membership alone (its only prev
and auth event), and kept beside it, so the room leaves the user's view.
No other server takes such a leave, and none is asked to; a server that
did answer with a template but whose handshake then failed is not passed
over, as the room's side may have taken the leave.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final, Protocol

from ranvier.errors import MatrixError
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import hash_and_sign_event
from ranvier.protocol.room_versions import SUPPORTED_ROOM_VERSIONS
from ranvier.protocol.signing import SigningKeyLike

from .builder import Clock, wall_clock_ms
from .client_events import event_content
from .context import out_of_band_to_persist
from .creation import EventCreator, member_event_content
from .interfaces import EventPersister, StateReader
from .knocks import knock_servers
from .room_joins import MembershipLookup

__all__ = ["LeaveClient", "RoomLeaves"]

_log: Final = logging.getLogger(__name__)
_MEMBER: Final = "m.room.member"


class LeaveClient(Protocol):
    """The leave handshake with a server in the room
    (:class:`ranvier.federation.leaves.FederationLeaveClient`).

    Both raise :class:`~ranvier.errors.MatrixError`: with the server's own
    errcode and status when it refuses, 502 when it gives no usable answer.
    """

    async def make_leave(self, destination: str, room_id: str, user_id: str) -> Any:
        """The decoded answer to ``make_leave``: ``room_version`` and ``event``."""
        ...

    async def send_leave(
        self, destination: str, room_id: str, event_id: str, event: Mapping[str, Any]
    ) -> None: ...


def _worth_trying_elsewhere(exc: MatrixError) -> bool:
    return exc.http_status >= 500 or exc.http_status in (404, 429)


class RoomLeaves:
    """Makes local users leave rooms, here or through a server in the room."""

    def __init__(
        self,
        *,
        server_name: str,
        signing_key: SigningKeyLike,
        creator: EventCreator,
        store: StateReader,
        memberships: MembershipLookup,
        persister: EventPersister,
        client: LeaveClient | None = None,
        clock: Clock = wall_clock_ms,
    ) -> None:
        self.server_name = server_name
        self._signing_key = signing_key
        self._creator = creator
        self._store = store
        self._memberships = memberships
        self._persister = persister
        self._client = client
        self._clock = clock

    async def leave(
        self,
        user_id: str,
        room_id: str,
        *,
        reason: str | None = None,
        content: Mapping[str, Any] | None = None,
        origin_server_ts: int | None = None,
    ) -> str:
        """Leave ``room_id``, decline an invite to it or withdraw a knock;
        return the leave's event ID. ``content`` and ``origin_server_ts``
        are as :meth:`EventCreator.leave` takes them; a leave made through
        another server, or on the invite alone, is dated now.
        """
        left = member_event_content("leave", content, reason)
        invite = await self._remote_membership(user_id, room_id)
        if invite is not None:
            return await self._leave_remotely(user_id, invite, left)
        return await self._creator.leave(
            user_id, room_id, content=left, origin_server_ts=origin_server_ts
        )

    async def _remote_membership(self, user_id: str, room_id: str) -> Pdu | None:
        """The invite of another server, or the user's knock made through
        one, when it is the user's newest membership and held from outside
        the room's DAG: whatever the room's state here says (a room left
        before), the room itself is only to be reached through its servers.
        """
        event_id = await self._memberships.get_latest_membership_event_id(user_id, room_id)
        if event_id is None:
            return None
        row = (await self._store.get_events([event_id])).get(event_id)
        if row is None or not row.outlier:
            return None
        membership = event_content(row).get("membership")
        if membership == "knock":
            if row.sender != user_id:
                return None
        elif membership != "invite" or row.sender.partition(":")[2] == self.server_name:
            return None
        version = await self._store.get_room_version(room_id)
        rv = SUPPORTED_ROOM_VERSIONS.get(version or "")
        return None if rv is None else Pdu.from_json(row.json, rv, check_limits=False)

    async def _leave_remotely(self, user_id: str, invite: Pdu, content: Mapping[str, Any]) -> str:
        if self._client is None:
            raise MatrixError(
                f"{invite.room_id} is not joined here and this server does not speak to others",
                errcode="M_UNKNOWN",
                http_status=501,
            )
        room_id = invite.room_id
        if invite.membership == "knock":
            servers = [s for s in knock_servers(invite) if s != self.server_name]
        else:
            servers = [invite.sender.partition(":")[2]]
            named = room_id.partition(":")[2]
            if named and named not in servers:
                servers.append(named)
        failures: list[str] = []
        answered = False
        for server in servers:
            try:
                answer = await self._client.make_leave(server, room_id, user_id)
            except MatrixError as exc:
                # Refused too (403: a withdrawn invite, a hostile inviter):
                # no template is no template.
                failures.append(f"{server}: {exc.message}")
                continue
            answered = True
            try:
                event = self._signed_leave(answer, invite, user_id, content)
                await self._client.send_leave(server, room_id, event.event_id, event.json)
            except MatrixError as exc:
                if not _worth_trying_elsewhere(exc):
                    raise
                failures.append(f"{server}: {exc.message}")
                continue
            await self._persister.persist_events([out_of_band_to_persist(event)])
            return event.event_id
        if not answered:
            _log.warning(
                "no server took the leave of %s from %s (%s); leaving here alone",
                user_id,
                room_id,
                "; ".join(failures) or "no server to ask",
            )
            event = self._leave_alone(invite, user_id, content)
            await self._persister.persist_events([out_of_band_to_persist(event)])
            return event.event_id
        raise MatrixError(
            f"could not leave {room_id} through another server: {'; '.join(failures)}",
            errcode="M_UNKNOWN",
            http_status=502,
        )

    def _leave_alone(self, pending: Pdu, user_id: str, content: Mapping[str, Any]) -> Pdu:
        """Our leave resting on the pending invite or knock alone, signed."""
        rv = pending.room_version
        fields: dict[str, Any] = {
            "type": _MEMBER,
            "room_id": pending.room_id,
            "sender": user_id,
            "state_key": user_id,
            "content": dict(content),
            "prev_events": [pending.event_id],
            "auth_events": [pending.event_id],
            "depth": pending.depth + 1,
            "origin_server_ts": self._clock(),
        }
        signed = hash_and_sign_event(fields, rv, self.server_name, self._signing_key)
        return Pdu.from_json(signed, rv)

    def _signed_leave(
        self, answer: Any, invite: Pdu, user_id: str, content: Mapping[str, Any]
    ) -> Pdu:
        """Our leave from a ``make_leave`` template, checked to be one, signed."""
        rv = invite.room_version
        if not isinstance(answer, dict) or not isinstance(answer.get("event"), dict):
            raise _bad_template("the answer has no event template")
        if answer.get("room_version", rv.identifier) != rv.identifier:
            raise _bad_template(f"room version {answer.get('room_version')!r} is not the invite's")
        template: dict[str, Any] = dict(answer["event"])
        expected = {
            "type": _MEMBER,
            "room_id": invite.room_id,
            "sender": user_id,
            "state_key": user_id,
        }
        for name, value in expected.items():
            if template.get(name) != value:
                raise _bad_template(f"its {name} is {template.get(name)!r}, not {value!r}")
        template.update(content=dict(content), origin_server_ts=self._clock())
        template.pop("signatures", None)
        template.pop("hashes", None)
        try:
            return Pdu.from_json(
                hash_and_sign_event(template, rv, self.server_name, self._signing_key), rv
            )
        except MatrixError as exc:
            raise _bad_template(exc.message) from None


def _bad_template(message: str) -> MatrixError:
    return MatrixError(
        f"unusable make_leave answer: {message}", errcode="M_UNKNOWN", http_status=502
    )
