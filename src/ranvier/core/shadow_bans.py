"""What a shadow-banned account's requests do, in one place.

An admin shadow-bans a local account (``POST
/_synapse/admin/v1/users/{userId}/shadow_ban``, Synapse's admin API) to
stop what it sends from reaching anyone without telling its owner, who
would otherwise move to a new account at once. The flag comes with the
access token's lookup (:attr:`ranvier.core.accounts.Requester.shadow_banned`),
on every process that serves the client API, so no request pays a read for
it.

Faked: checked as for anyone, answered as a success, and dropped.

* Events into rooms: ``/send`` (messages, reactions, redactions),
  ``/state`` (state other than memberships), ``/redact``. The event is
  built and checked against the room's current state by the auth rules,
  exactly as a real one (:meth:`ranvier.core.creation.EventCreator.rehearse_event`),
  so a request a real send would refuse is refused alike; then it is
  neither written nor sent anywhere, and its ID, of the shape the room's
  version gives, is answered. Under a transaction ID the answer is
  recorded as a real send's is (:mod:`ranvier.core.client_txns`), so a
  retry, on any process, answers the same ID.
* Invites: ``/invite`` and a ``/state`` member event that invites, checked
  the same way; ``/createRoom`` makes the room without its ``invite`` list.
* A per-room profile: a member's own ``/state`` member event that keeps
  them joined (a new display name or avatar in one room). Other member
  events sent through ``/state`` (a leave, kick, ban or unban) are real.
* Typing notifications: checked (the user is joined, it is their own
  typing), then dropped. The other ephemeral traffic (receipts, presence,
  to-device messages) goes through, as Synapse lets it.
* Room upgrades: the tombstone is rehearsed as above, then a room ID of
  the new version's shape is answered; no room is made.
* Profile changes: the profile is changed (a profile is public whoever
  reads it), but no member event carries it into the user's rooms.

Not faked, as in Synapse: joins (which let the user see rooms they are
told of, and carry the global profile), leaves, knocks, kicks, bans, and
rooms the user creates, which only they are in until someone joins.

Each faked answer waits a random while first (:meth:`ShadowBans.pause`),
on Trio's clock: a real send takes a moment, and a spam bot's next request
comes that much later, as a rate limit would make it (so the pause goes
with the rate limits: none where they are turned off). What the user reads
is untouched: their own sync does not show what was dropped, the one tell
that remains, as on Synapse.
"""

from __future__ import annotations

import random
from typing import Final

import trio

__all__ = ["DEFAULT_DELAY_SECONDS", "NO_DELAY", "ShadowBans"]

#: Synapse's pause before a faked answer: 1 to 10 seconds.
DEFAULT_DELAY_SECONDS: Final = (1.0, 10.0)
NO_DELAY: Final = (0.0, 0.0)


class ShadowBans:
    """Paces the faked answers to shadow-banned accounts (see the module's doc)."""

    def __init__(
        self,
        *,
        delay_seconds: tuple[float, float] = DEFAULT_DELAY_SECONDS,
        rng: random.Random | None = None,
    ) -> None:
        shortest, longest = delay_seconds
        if not 0 <= shortest <= longest:
            raise ValueError(f"a delay range runs from 0 or more upwards, not {delay_seconds}")
        self._shortest = shortest
        self._longest = longest
        # Not secrets: the pause hides nothing, it only varies.
        self._rng = rng if rng is not None else random.Random()

    async def pause(self) -> None:
        """Wait before a faked answer, a while drawn evenly from the range.

        Cancelled (the client gave up), it simply ends: a faked request has
        nothing to undo.
        """
        await trio.sleep(self._rng.uniform(self._shortest, self._longest))
