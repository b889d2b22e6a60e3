"""What a suspended account may not do, in one place.

The spec leaves the list to the server (client-server API, "Account
suspension"), asking that a suspended user can still read, sync, leave
rooms, reject invites, redact their own events, look after their devices,
keys and key backup, log out and deactivate. Everything on that list is
allowed here by being absent below; what is refused answers 403
``M_USER_SUSPENDED``.

The refusals are checked by the handlers of the endpoints named with each
action, from the flag the access token's lookup carries
(:attr:`ranvier.core.accounts.Requester.suspended`), so no request pays a
read for it. Kicking, banning and unbanning stay allowed, as in the spec's
recommended list: they remove or keep out others, which is what a
suspension is for, and a suspended moderator cannot add anyone with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

from ranvier.errors import MatrixError

from .accounts import Requester

__all__ = [
    "REFUSED_WHILE_SUSPENDED",
    "SuspendedAction",
    "refuse_if_suspended",
    "refuse_send_if_suspended",
    "suspended_error",
]

SuspendedAction = Literal[
    "join", "knock", "invite", "send", "state", "profile", "redact_others", "create_room"
]

#: Each refused action, with why it is refused.
REFUSED_WHILE_SUSPENDED: Final[Mapping[SuspendedAction, str]] = {
    # POST /join/{roomIdOrAlias} and /rooms/{roomId}/join. Accepting an
    # invite is a join, so it is refused here too; rejecting one is a leave.
    "join": "joining a room (or accepting an invite) brings the account to new people",
    # POST /knock/{roomIdOrAlias}: a knock is a message to the room's members.
    "knock": "knocking asks a room's members to let the account in",
    # POST /rooms/{roomId}/invite: an invite reaches someone not yet in contact.
    "invite": "an invite reaches people the account is not yet talking to",
    # PUT /rooms/{roomId}/send/{eventType}/{txnId}, but for m.room.redaction,
    # which goes by "redact_others" so that one's own events can be taken back.
    "send": "sending to rooms is the activity a suspension stops",
    # PUT /rooms/{roomId}/state/...: state is what members see of a room
    # (its name, topic, members' profiles); leaving has its own endpoint.
    "state": "changing a room's state is sending to it",
    # PUT and DELETE /profile/{userId}/{field}: a profile change is a new
    # member event in every room the account is in.
    "profile": "a profile change is shown in every room the account is in",
    # PUT /rooms/{roomId}/redact/... (and /send m.room.redaction) of another
    # user's event: moderation by an account under suspension.
    "redact_others": "removing other users' events is moderation the account may not do now",
    # POST /createRoom and /rooms/{roomId}/upgrade (which makes a room):
    # a new room may invite, and is a place to carry on from.
    "create_room": "a new room is a new place to carry on the activity suspended",
}


def suspended_error(action: SuspendedAction) -> MatrixError:
    """403 ``M_USER_SUSPENDED`` for ``action``, saying why."""
    return MatrixError(
        f"this account is suspended: {REFUSED_WHILE_SUSPENDED[action]}",
        errcode="M_USER_SUSPENDED",
        http_status=403,
    )


def refuse_if_suspended(requester: Requester, action: SuspendedAction) -> None:
    """Raise 403 ``M_USER_SUSPENDED`` if ``requester``'s account is suspended."""
    if requester.suspended:
        raise suspended_error(action)


def refuse_send_if_suspended(requester: Requester, event_type: str) -> bool:
    """For ``/send``: raise unless the event is a redaction; True when it is
    one from a suspended account, which the caller must then allow only for
    the account's own events ("redact_others")."""
    if not requester.suspended:
        return False
    if event_type != "m.room.redaction":
        raise suspended_error("send")
    return True
