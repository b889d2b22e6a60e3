"""Whether a room's policy server recommends an event received over
federation (spec v1.18, MSC4284; the rules are in
:mod:`ranvier.protocol.policy_servers`).

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
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Final, Protocol

import msgspec

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


class _PolicyContent(msgspec.Struct):
    content: dict[str, object] = {}


_decode_policy = msgspec.json.Decoder(_PolicyContent).decode


class PolicyServers:
    """The policy server checks of events received from other servers."""

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
        event_id = state.get(POLICY_KEY)
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
