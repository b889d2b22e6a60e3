"""Room upgrades: a room replaced by a new one of another room version.

``POST /rooms/{roomId}/upgrade`` lands here. The old room's users cannot be
moved (this server cannot join users of other servers, or its own without
their consent): the new room is made by the requester alone, with the old
room's transferable state, and the old room gets a tombstone naming it, so
that clients take their users there.

Invariants
----------

* **Checked before anything is written.** The version is supported (400
  ``M_UNSUPPORTED_ROOM_VERSION``), the room known (404), its state whole,
  not partial (400 ``M_BAD_STATE``: what would be copied is not known yet),
  and the requester joined with the power to send ``m.room.tombstone`` (403
  ``M_FORBIDDEN``). The new room's events are rehearsed against the auth
  rules by :meth:`~ranvier.core.creation.EventCreator.create_room` before
  the first is written.
* **The tombstone comes last but for the old room's clean-up.** The new room
  is made and filled, and the directory (aliases, room list) moved to it,
  before the tombstone is sent: a failure half-way leaves an unused new room
  and an old room as it was, never a tombstone pointing at a room that is
  not set up.
* **One upgrade of a room at a time.** Upgrades of one room queue behind a
  lock of their own (the room's event lock is taken by each event sent, and
  cannot be held across them). An upgrade that finds the room already
  tombstoned by the same user to a room of the requested version answers
  that room: a request repeated while the first ran makes no second room.
  Any other upgrade of a tombstoned room is refused (400 ``M_BAD_STATE``).
* **One upgrade of a room at a time across processes.** A client_reader
  worker serves upgrades too, and its lock is not the main process's: under
  the lock, before the room is read, the upgrade takes a claim of the room
  in the database (``claims``, through the writer, so a worker's goes over
  replication). A claim held elsewhere is waited for, polled a few times a
  second for at most ``claim_wait_s`` (then 400 ``M_BAD_STATE``: the room
  is being upgraded); once released, the room is read as usual and the
  tombstone found. The claim is released when the upgrade ends, however it
  ends, even if cancelled. A claim older than ``claim_stale_after_ms`` is
  taken over, since a process that died half-way never releases it; an
  upgrade takes seconds, far less than that limit.
* **Bans follow.** Each user banned in the old room is banned in the new
  one, by the requester, with the ban's reason: a banned user could
  otherwise follow the tombstone and join the new room. A ban the auth
  rules refuse there (its target a creator of the new room, or listed
  above the requester) is left out; the upgrade goes on.
* **The requester's settings follow.** Once the new room is made, the
  requester's push rule and tags of the old room are copied to it
  (``settings``, :mod:`ranvier.core.upgrade_settings`), as they would be
  for any other user joining it.
* **After the tombstone, only what helps.** Taking the moved aliases out of
  the old room's ``m.room.canonical_alias`` and raising its power levels so
  that only moderators may talk or invite are done if the requester may;
  if the auth rules refuse either, the upgrade has still happened.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

import trio

from ranvier.errors import AuthError, MatrixError
from ranvier.protocol.auth import CREATE_KEY, POWER_LEVELS_KEY, StateKey, is_valid_user_id
from ranvier.protocol.events import Pdu
from ranvier.protocol.power_levels import (
    CREATOR_POWER_LEVEL,
    get_named_level,
    get_send_level,
    get_user_power_level,
    parse_power_level,
)
from ranvier.protocol.room_versions import RoomVersion, get_room_version

from .builder import wall_clock_ms
from .creation import Preset
from .ingest import RoomLocks
from .interfaces import StateReader

__all__ = [
    "CLAIM_STALE_AFTER_MS",
    "CLAIM_WAIT_S",
    "DirectoryMover",
    "RoomUpgrader",
    "SettingsCarrier",
    "UpgradeClaims",
    "UpgradeEventSender",
]

#: How old a claim may grow before another upgrade takes it over.
CLAIM_STALE_AFTER_MS: Final = 5 * 60 * 1000
#: How long an upgrade waits for another process's claim of its room.
CLAIM_WAIT_S: Final = 60.0
_CLAIM_POLL_S: Final = 0.25

_log: Final = logging.getLogger(__name__)

_MEMBER: Final = "m.room.member"
_TOMBSTONE: Final = "m.room.tombstone"
_CANONICAL_ALIAS: Final = "m.room.canonical_alias"
_JOIN_RULES: Final = "m.room.join_rules"
_HISTORY_VISIBILITY: Final = "m.room.history_visibility"
_GUEST_ACCESS: Final = "m.room.guest_access"

#: State copied to the new room at its key "", as the spec recommends, with
#: the canonical alias (the aliases move too).
_TRANSFERRED: Final = (
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    _GUEST_ACCESS,
    _HISTORY_VISIBILITY,
    _JOIN_RULES,
    _CANONICAL_ALIAS,
)
#: State copied at every state key: a space's links to its parents and children.
_TRANSFERRED_ALL_KEYS: Final = ("m.space.parent", "m.space.child")

#: What an absent event of these types means, written out in the new room so
#: that the creation preset's own choice does not take its place.
_ABSENT_MEANS: Final[Mapping[str, dict[str, str]]] = {
    _JOIN_RULES: {"join_rule": "invite"},
    _HISTORY_VISIBILITY: {"history_visibility": "shared"},
    _GUEST_ACCESS: {"guest_access": "forbidden"},
}

#: Fields of the old create event the new one keeps.
_CREATE_FIELDS_KEPT: Final = ("type", "m.federate")

_TOMBSTONE_BODY: Final = "This room has been replaced"

#: The named levels of a power levels event, and its maps of levels.
_NAMED_LEVELS: Final = (
    "ban",
    "events_default",
    "invite",
    "kick",
    "redact",
    "state_default",
    "users_default",
)
_LEVEL_MAPS: Final = ("events", "users", "notifications")


class UpgradeEventSender(Protocol):
    """Creates rooms and sends events for local users
    (:class:`ranvier.core.creation.EventCreator`).
    """

    async def create_room(
        self,
        creator: str,
        *,
        preset: Preset = ...,
        initial_state: Iterable[Mapping[str, Any]] = ...,
        creation_content: Mapping[str, Any] | None = ...,
        room_version: str = ...,
    ) -> str: ...

    async def send_event(
        self,
        sender: str,
        room_id: str,
        event_type: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = ...,
    ) -> str: ...

    async def rehearse_event(
        self,
        sender: str,
        room_id: str,
        event_type: str,
        content: Mapping[str, Any],
        *,
        state_key: str | None = ...,
    ) -> str: ...

    def made_up_room_id(self, room_version: str) -> str: ...


class SettingsCarrier(Protocol):
    """(:class:`ranvier.core.upgrade_settings.UpgradedRoomSettings`)"""

    async def joined(self, user_id: str, room_id: str) -> None: ...


class DirectoryMover(Protocol):
    """Moves aliases and the room list entry in one commit
    (:class:`ranvier.storage.room_upgrades.RoomUpgradeStorage`).
    """

    async def move_directory_entries(self, old_room_id: str, new_room_id: str) -> list[str]: ...


class UpgradeClaims(Protocol):
    """The claims keeping a room's upgrades one at a time across processes
    (:class:`ranvier.storage.room_upgrades.RoomUpgradeStorage`).
    """

    async def take_upgrade_claim(
        self,
        room_id: str,
        user_id: str,
        new_version: str,
        *,
        claim_id: str,
        now_ms: int,
        stale_before_ms: int,
    ) -> bool: ...

    async def release_upgrade_claim(self, room_id: str, *, claim_id: str) -> None: ...


def _invalid(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)


def _bad_state(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_BAD_STATE", http_status=400)


class RoomUpgrader:
    """Upgrades rooms by the rules in the module's docstring.

    ``events`` creates the new room and sends every event; ``store`` reads
    the old room; ``directory`` moves its aliases and room list entry;
    ``claims`` keeps other processes' upgrades of the room out, dated by
    ``clock_ms``; ``settings`` carries the requester's settings of the old
    room over.
    """

    def __init__(
        self,
        *,
        events: UpgradeEventSender,
        store: StateReader,
        directory: DirectoryMover,
        claims: UpgradeClaims,
        settings: SettingsCarrier | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
        claim_stale_after_ms: int = CLAIM_STALE_AFTER_MS,
        claim_wait_s: float = CLAIM_WAIT_S,
    ) -> None:
        self._settings = settings
        self._events = events
        self._store = store
        self._directory = directory
        self._claims = claims
        self._clock_ms = clock_ms
        self._claim_stale_after_ms = claim_stale_after_ms
        self._claim_wait_s = claim_wait_s
        self._locks = RoomLocks()

    async def upgrade(
        self,
        user_id: str,
        room_id: str,
        new_version: str,
        *,
        additional_creators: Sequence[str] | None = None,
    ) -> str:
        """Replace ``room_id`` by a new room of ``new_version``; return its ID.

        ``additional_creators`` are the new room's other creators where its
        version has them (from v12); elsewhere they are ignored, as the spec
        says. The old room's own additional creators are not carried over.
        """
        target = get_room_version(new_version)
        others = _additional_creators(additional_creators, user_id, target)
        async with self._locks.hold(room_id):
            claim_id = secrets.token_urlsafe(12)
            await self._claim(user_id, room_id, target.identifier, claim_id)
            try:
                return await self._upgrade_claimed(user_id, room_id, target, others)
            finally:
                with trio.CancelScope(shield=True):
                    await self._release(room_id, claim_id)

    async def rehearse(
        self,
        user_id: str,
        room_id: str,
        new_version: str,
        *,
        additional_creators: Sequence[str] | None = None,
    ) -> str:
        """What :meth:`upgrade` would answer a shadow-banned requester
        (:mod:`ranvier.core.shadow_bans`), changing nothing: the same checks,
        then the tombstone rehearsed against the old room, naming a room ID
        of the new version's shape that no room has.
        """
        target = get_room_version(new_version)
        _additional_creators(additional_creators, user_id, target)
        old = await self._read_room(room_id)
        old.check_may_upgrade(user_id)
        if old.tombstone is not None:
            return await self._already_upgraded(user_id, old, target)
        new_room_id = self._events.made_up_room_id(target.identifier)
        await self._events.rehearse_event(
            user_id,
            room_id,
            _TOMBSTONE,
            {"body": _TOMBSTONE_BODY, "replacement_room": new_room_id},
            state_key="",
        )
        return new_room_id

    async def _release(self, room_id: str, claim_id: str) -> None:
        """Give up the room's claim. A release that fails is logged, not
        raised: raised, it would hide how the upgrade itself ended (a new
        room made, or the error that stopped it), and the claim lapses
        anyway once stale.
        """
        try:
            await self._claims.release_upgrade_claim(room_id, claim_id=claim_id)
        except Exception:
            _log.warning(
                "could not release the upgrade claim on %s; it lapses after %d s",
                room_id,
                self._claim_stale_after_ms // 1000,
                exc_info=True,
            )

    async def _claim(self, user_id: str, room_id: str, new_version: str, claim_id: str) -> None:
        """Take the room's claim as ``claim_id``, waiting for another's."""
        deadline = trio.current_time() + self._claim_wait_s
        while True:
            now = self._clock_ms()
            if await self._claims.take_upgrade_claim(
                room_id,
                user_id,
                new_version,
                claim_id=claim_id,
                now_ms=now,
                stale_before_ms=now - self._claim_stale_after_ms,
            ):
                return
            if trio.current_time() >= deadline:
                raise _bad_state(f"room {room_id} is being upgraded; try again once that is done")
            await trio.sleep(_CLAIM_POLL_S)

    async def _upgrade_claimed(
        self, user_id: str, room_id: str, target: RoomVersion, others: list[str]
    ) -> str:
        old = await self._read_room(room_id)
        old.check_may_upgrade(user_id)
        if old.tombstone is not None:
            return await self._already_upgraded(user_id, old, target)
        new_room_id = await self._create_replacement(user_id, old, target, others)
        if self._settings is not None:
            await self._settings.joined(user_id, new_room_id)
        moved = await self._directory.move_directory_entries(room_id, new_room_id)
        await self._events.send_event(
            user_id,
            room_id,
            _TOMBSTONE,
            {"body": _TOMBSTONE_BODY, "replacement_room": new_room_id},
            state_key="",
        )
        await self._tidy_old_room(user_id, old, moved)
        return new_room_id

    async def _read_room(self, room_id: str) -> _OldRoom:
        version = await self._store.get_room_version(room_id)
        if version is None:
            raise MatrixError(
                f"room {room_id} is not known here", errcode="M_NOT_FOUND", http_status=404
            )
        if await self._store.is_partial_state_room(room_id):
            raise _bad_state(
                f"room {room_id} was joined with partial state and its state is still being"
                " fetched; it can be upgraded once that is done"
            )
        rv = get_room_version(version, unsupported_ok=True)
        state_ids = await self._store.get_current_state_ids(room_id)
        rows = await self._store.get_events(list(state_ids.values()))
        state: dict[StateKey, Pdu] = {}
        for key, event_id in state_ids.items():
            row = rows.get(event_id)
            if row is not None:
                state[key] = Pdu.from_json(row.json, rv, check_limits=False)
        extremities = await self._store.get_forward_extremities(room_id)
        ends = await self._store.get_events(list(extremities))
        latest = [Pdu.from_json(row.json, rv, check_limits=False) for row in ends.values()]
        last = max(latest, key=lambda event: (event.depth, event.event_id), default=None)
        return _OldRoom(room_id, state, None if last is None else last.event_id)

    async def _already_upgraded(self, user_id: str, old: _OldRoom, target: RoomVersion) -> str:
        """What a request to upgrade a tombstoned room gets; see the module's docstring."""
        tombstone = old.tombstone
        assert tombstone is not None
        replacement = tombstone.content.get("replacement_room")
        if (
            tombstone.sender == user_id
            and type(replacement) is str
            and await self._store.get_room_version(replacement) == target.identifier
        ):
            return replacement
        raise _bad_state(f"room {old.room_id} has already been upgraded to {replacement!r}")

    async def _create_replacement(
        self, user_id: str, old: _OldRoom, target: RoomVersion, others: list[str]
    ) -> str:
        creators = {user_id, *others} if target.privileged_creators else set()
        initial: list[dict[str, Any]] = []
        final_levels: dict[str, Any] | None = None
        power_levels = old.state.get(POWER_LEVELS_KEY)
        if power_levels is not None:
            levels = _levels_for(power_levels, target, creators)
            if not target.privileged_creators:
                kept = _kept_level(user_id, old)
                needed = _needed_level(levels, old.transferred_types(), bans=bool(old.bans()))
                levels["users"][user_id] = max(kept, needed)
                if kept < needed:
                    # Raised while the state is copied, then put back.
                    final_levels = {**levels, "users": {**levels["users"], user_id: kept}}
            initial.append(_state_template(POWER_LEVELS_KEY[0], "", levels))
        for (event_type, state_key), event in old.transferred():
            initial.append(_state_template(event_type, state_key, event.content))
        present = {(item["type"], item["state_key"]) for item in initial}
        for event_type, content in _ABSENT_MEANS.items():
            if (event_type, "") not in present:
                initial.append(_state_template(event_type, "", content))

        new_room_id = await self._events.create_room(
            user_id,
            preset="private_chat",
            initial_state=initial,
            creation_content=_create_content(old, target, others),
            room_version=target.identifier,
        )
        for banned, content in old.bans():
            await self._copy_ban(user_id, new_room_id, banned, content)
        if final_levels is not None:
            await self._events.send_event(
                user_id, new_room_id, POWER_LEVELS_KEY[0], final_levels, state_key=""
            )
        return new_room_id

    async def _copy_ban(
        self, user_id: str, room_id: str, banned: str, content: Mapping[str, Any]
    ) -> None:
        try:
            await self._events.send_event(user_id, room_id, _MEMBER, content, state_key=banned)
        except AuthError as exc:
            _log.info("upgrade of a room to %s: the ban of %s not copied: %s", room_id, banned, exc)

    async def _tidy_old_room(self, user_id: str, old: _OldRoom, moved: Collection[str]) -> None:
        """The old room's canonical alias without the moved aliases, and its
        power levels raised, each only if the rules let the requester.
        """
        canonical = old.state.get((_CANONICAL_ALIAS, ""))
        if canonical is not None and moved:
            content = _without_aliases(canonical.content, set(moved))
            if content != canonical.content:
                await self._send_if_allowed(user_id, old.room_id, _CANONICAL_ALIAS, content)
        power_levels = old.state.get(POWER_LEVELS_KEY)
        if power_levels is not None:
            raised = _restricted(power_levels)
            if raised is not None:
                await self._send_if_allowed(user_id, old.room_id, POWER_LEVELS_KEY[0], raised)

    async def _send_if_allowed(
        self, user_id: str, room_id: str, event_type: str, content: Mapping[str, Any]
    ) -> None:
        with contextlib.suppress(AuthError):
            await self._events.send_event(user_id, room_id, event_type, content, state_key="")


class _OldRoom:
    """The room being upgraded, as read under the upgrade lock."""

    def __init__(
        self,
        room_id: str,
        state: Mapping[StateKey, Pdu],
        last_event_id: str | None,
    ) -> None:
        self.room_id = room_id
        self.state = state
        self.last_event_id = last_event_id

    @property
    def create(self) -> Pdu | None:
        return self.state.get(CREATE_KEY)

    @property
    def tombstone(self) -> Pdu | None:
        return self.state.get((_TOMBSTONE, ""))

    def check_may_upgrade(self, user_id: str) -> None:
        member = self.state.get((_MEMBER, user_id))
        if member is None or member.membership != "join":
            raise MatrixError(
                f"{user_id} is not in room {self.room_id}", errcode="M_FORBIDDEN", http_status=403
            )
        power_levels = self.state.get(POWER_LEVELS_KEY)
        level = get_user_power_level(user_id, power_levels=power_levels, create=self.create)
        needed = get_send_level(power_levels, _TOMBSTONE, state=True)
        if level < needed:
            raise MatrixError(
                f"upgrading room {self.room_id} takes the power to send {_TOMBSTONE}"
                f" ({needed}); {user_id} has {level}",
                errcode="M_FORBIDDEN",
                http_status=403,
            )

    def transferred(self) -> list[tuple[StateKey, Pdu]]:
        """The state copied to the new room, power levels apart, in a fixed order."""
        return [(key, self.state[key]) for key in _transferred_keys(self.state)]

    def bans(self) -> list[tuple[str, dict[str, Any]]]:
        """Each banned user and the content of their ban in the new room: the
        membership and a reason (a string) if the old ban gave one, nothing
        else of an event another user wrote.
        """
        bans: list[tuple[str, dict[str, Any]]] = []
        for (event_type, state_key), event in sorted(self.state.items(), key=lambda kv: kv[0]):
            if event_type != _MEMBER or event.membership != "ban":
                continue
            content: dict[str, Any] = {"membership": "ban"}
            reason = event.content.get("reason")
            if type(reason) is str:
                content["reason"] = reason
            bans.append((state_key, content))
        return bans

    def transferred_types(self) -> set[str]:
        return {event_type for (event_type, _), _ in self.transferred()} | set(_ABSENT_MEANS)


def _transferred_keys(state: Mapping[StateKey, Pdu]) -> list[StateKey]:
    keys = [(event_type, "") for event_type in _TRANSFERRED if (event_type, "") in state]
    keys.extend(sorted(key for key in state if key[0] in _TRANSFERRED_ALL_KEYS))
    return keys


def _state_template(event_type: str, state_key: str, content: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": event_type, "state_key": state_key, "content": dict(content)}


def _additional_creators(
    given: Sequence[str] | None, user_id: str, target: RoomVersion
) -> list[str]:
    if given is None:
        return []
    if isinstance(given, str) or not isinstance(given, Sequence):
        raise _invalid("additional_creators must be a list of user IDs")
    for creator in given:
        if type(creator) is not str or not is_valid_user_id(creator):
            raise _invalid(f"additional_creators holds {creator!r}, which is not a user ID")
    if not target.privileged_creators:
        return []
    return [creator for creator in dict.fromkeys(given) if creator != user_id]


def _create_content(old: _OldRoom, target: RoomVersion, others: list[str]) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if old.create is not None:
        content.update(
            (field, old.create.content[field])
            for field in _CREATE_FIELDS_KEPT
            if field in old.create.content
        )
    predecessor = {"room_id": old.room_id}
    if not target.room_id_from_create_event and old.last_event_id is not None:
        # From v12 the new room's ID is the create event's hash, so it cannot
        # wait for the old room's tombstone; the spec lets it name no event.
        predecessor["event_id"] = old.last_event_id
    content["predecessor"] = predecessor
    if others:
        content["additional_creators"] = others
    return content


def _levels_for(power_levels: Pdu, target: RoomVersion, creators: set[str]) -> dict[str, Any]:
    """The old room's power levels as the new room's version takes them:
    levels as integers, and creators left out of ``users`` where they have
    their own power.
    """
    old_rv = power_levels.room_version
    content: dict[str, Any] = dict(power_levels.content)
    for name in _NAMED_LEVELS:
        if name in content:
            level = parse_power_level(content[name], old_rv)
            if level is None:
                del content[name]
            else:
                content[name] = level
    for name in _LEVEL_MAPS:
        mapping = content.get(name)
        if not isinstance(mapping, dict):
            content.pop(name, None)
            continue
        content[name] = {
            key: level
            for key, value in mapping.items()
            if (level := parse_power_level(value, old_rv)) is not None
            and not (name == "users" and key in creators)
        }
    content.setdefault("users", {})
    return content


def _kept_level(user_id: str, old: _OldRoom) -> int:
    """The requester's level in the old room, for a new room that lists it.

    A creator of a v12 room has unbounded power there; it becomes the
    highest level the new room's power levels name (at least 100).
    """
    power_levels = old.state.get(POWER_LEVELS_KEY)
    level = get_user_power_level(user_id, power_levels=power_levels, create=old.create)
    if level < CREATOR_POWER_LEVEL:
        return level
    named = [get_named_level(power_levels, name) for name in _NAMED_LEVELS]
    if power_levels is not None:
        for name in ("events", "users"):
            mapping = power_levels.content.get(name)
            if isinstance(mapping, dict):
                parsed = (parse_power_level(v, power_levels.room_version) for v in mapping.values())
                named.extend(found for found in parsed if found is not None)
    return max(100, *named)


def _needed_level(levels: Mapping[str, Any], event_types: Iterable[str], *, bans: bool) -> int:
    """The level sending every copied state event and the power levels
    takes, and the bans if there are any.
    """
    events: Mapping[str, int] = levels.get("events", {})
    state_default: int = levels.get("state_default", 50)
    needed = [events.get(event_type, state_default) for event_type in event_types]
    needed.append(events.get(POWER_LEVELS_KEY[0], state_default))
    if bans:
        needed.append(levels.get("ban", 50))
    return max(needed)


def _without_aliases(content: Mapping[str, Any], moved: set[str]) -> dict[str, Any]:
    kept = dict(content)
    if kept.get("alias") in moved:
        del kept["alias"]
    alt = kept.get("alt_aliases")
    if isinstance(alt, list):
        kept["alt_aliases"] = [alias for alias in alt if alias not in moved]
        if not kept["alt_aliases"]:
            del kept["alt_aliases"]
    return kept


def _restricted(power_levels: Pdu) -> dict[str, Any] | None:
    """The old room's power levels with talking and inviting left to
    moderators: ``events_default`` and ``invite`` raised to the greater of 50
    and ``users_default`` + 1, as the spec suggests; None if they already are.
    """
    restricted = max(50, get_named_level(power_levels, "users_default") + 1)
    content = dict(power_levels.content)
    changed = False
    for name in ("events_default", "invite"):
        if get_named_level(power_levels, name) < restricted:
            content[name] = restricted
            changed = True
    return content if changed else None
