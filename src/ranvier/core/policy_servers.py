"""Whether a room's policy server recommends an event received over
federation, and its signature on the events of our own users (spec v1.18,
MSC4284; the rules are in :mod:`ranvier.protocol.policy_servers`).

A room uses a policy server when its current state names one in a valid
``m.room.policy`` event and that server has a joined user in the room. In
such a room an event that needs the policy server's signature and lacks a
valid one is asked for again (the policy server's key may have changed
since the origin asked); what the policy server gives is added to the
event. An event it still does not recommend is soft failed by the caller:
the auth rules are not affected, so it stays in the DAG.

A policy server that refuses, fails or cannot be reached leaves the event
unrecommended, as the spec has it. Rooms without a policy server, nearly
all of them, cost one current-state key per event, read where the caller
reads current state: event ingestion reads it with the others a
transaction's events need, in one read for them all.

Our users' events (:meth:`PolicyServers.sign_ours`) are signed by the
policy server before they are written or sent, as every server in such a
room must have them. The caller gives the ``m.room.policy`` event ID of the
state the event was checked against, which it read with the auth checks'
keys: a room without one costs nothing more. A refusal is raised with the
policy server's own error, for the client; nothing of the event is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Final, Protocol

import msgspec

from ranvier.errors import MatrixError
from ranvier.protocol.events import Pdu
from ranvier.protocol.policy_servers import (
    POLICY_EVENT_TYPE,
    POLICY_STATE_KEY,
    RoomPolicy,
    has_policy_signature,
    needs_policy_signature,
    room_policy,
    with_policy_signature,
)
from ranvier.storage.records import StateKey, StoredEvent

__all__ = [
    "POLICY_KEY",
    "CurrentStateKeys",
    "PolicyServerStore",
    "PolicyServers",
    "PolicySigner",
]

_log = logging.getLogger(__name__)

#: The key of a room's policy server in its state.
POLICY_KEY: Final[StateKey] = (POLICY_EVENT_TYPE, POLICY_STATE_KEY)


class CurrentStateKeys(Protocol):
    """Entries of a room's current state (:class:`ranvier.storage.Storage`,
    or ingestion's run of a room, which holds them)."""

    async def get_current_state_ids_for_keys(
        self, room_id: str, keys: Collection[StateKey]
    ) -> Mapping[StateKey, str]: ...


class PolicyServerStore(CurrentStateKeys, Protocol):
    """The reads that say whether a room uses a policy server
    (:class:`ranvier.storage.Storage`)."""

    async def get_events(self, event_ids: Collection[str]) -> Mapping[str, StoredEvent]: ...

    async def server_has_joined_member(self, room_id: str, server_name: str) -> bool: ...


class PolicySigner(Protocol):
    """Asks a policy server to sign an event
    (:class:`ranvier.federation.policy_client.FederationPolicyClient`)."""

    async def ask_to_sign(self, policy_server: str, event: Pdu) -> str | None:
        """The policy server's signature of ``event`` by its policy key, or
        None when it refuses, fails or answers without one."""
        ...

    async def request_signature(self, policy_server: str, event: Pdu) -> str:
        """As :meth:`ask_to_sign`, but raising
        :class:`~ranvier.errors.MatrixError` for a refusal (the policy
        server's error as it gave it) or a failure."""
        ...


class _PolicyContent(msgspec.Struct):
    content: dict[str, object] = {}


_decode_policy = msgspec.json.Decoder(_PolicyContent).decode


class PolicyServers:
    """A room's policy server: its checks of events received from other
    servers (:meth:`recommended`) and its signature on ours (:meth:`sign_ours`)."""

    def __init__(self, store: PolicyServerStore, signer: PolicySigner | None = None) -> None:
        self._store = store
        self._signer = signer

    async def room_policy(
        self, room_id: str, current: CurrentStateKeys | None = None
    ) -> RoomPolicy | None:
        """The policy server ``room_id`` uses now, or None when it uses none;
        its current state read from ``current`` when given."""
        reader = self._store if current is None else current
        state = await reader.get_current_state_ids_for_keys(room_id, (POLICY_KEY,))
        return await self.policy_named_by(room_id, state.get(POLICY_KEY))

    async def policy_named_by(self, room_id: str, event_id: str | None) -> RoomPolicy | None:
        """The policy server the ``m.room.policy`` event ``event_id`` names,
        if it is one the room uses (its server has a joined user now)."""
        if event_id is None:
            return None
        stored = (await self._store.get_events((event_id,))).get(event_id)
        if stored is None:
            return None
        try:
            policy = room_policy(_decode_policy(stored.json).content)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        if policy is None or not await self._store.server_has_joined_member(room_id, policy.via):
            return None
        return policy

    async def recommended(self, event: Pdu, current: CurrentStateKeys | None = None) -> Pdu | None:
        """``event`` as it is to be kept when its room's policy server
        recommends it (with the signature the policy server gave, if it was
        asked), or None when it does not. ``current``: where the room's
        current state is read, if not from storage.
        """
        if not needs_policy_signature(event):
            return event
        policy = await self.room_policy(event.room_id, current)
        if policy is None or has_policy_signature(event, policy):
            return event
        if self._signer is None:
            return None
        signature = await self._signer.ask_to_sign(policy.via, event)
        if signature is None:
            return None
        signed = with_policy_signature(event, policy, signature)
        if not has_policy_signature(signed, policy):
            _log.info(
                "policy server %s gave %s a signature its key in %s does not verify",
                policy.via,
                event.event_id,
                event.room_id,
            )
            return None
        return signed

    async def sign_ours(self, event: Pdu, policy_event_id: str | None) -> Pdu:
        """``event``, one of ours, with the signature of the policy server the
        ``m.room.policy`` event ``policy_event_id`` names; ``event`` as it is
        when that is none, or the event needs no signature.

        Raises :class:`~ranvier.errors.MatrixError` when the policy server
        refuses (its own error), fails, or gives a signature its key in the
        room does not verify: the spec has the client's request refused and
        the event sent nowhere.
        """
        if policy_event_id is None or not needs_policy_signature(event):
            return event
        policy = await self.policy_named_by(event.room_id, policy_event_id)
        if policy is None:
            return event
        if self._signer is None:
            raise MatrixError(
                f"{event.room_id} uses the policy server {policy.via}, which this server"
                " cannot ask",
                errcode="M_UNKNOWN",
                http_status=502,
            )
        signature = await self._signer.request_signature(policy.via, event)
        signed = with_policy_signature(event, policy, signature)
        if not has_policy_signature(signed, policy):
            raise MatrixError(
                f"the room's policy server {policy.via} gave a signature its key in"
                f" {event.room_id} does not verify",
                errcode="M_UNKNOWN",
                http_status=502,
            )
        return signed
