"""Other servers' signing keys: fetched, verified, cached.

:class:`KeyRing` answers "what is key K of server S, and may it be trusted
at time T?" for request authentication (``X-Matrix``) and for event
signatures. It looks in order:

1. in memory;
2. in storage (keys fetched before, by this process or an earlier one);
3. at the server itself, ``GET /_matrix/key/v2/server``;
4. at the configured notary servers, ``GET /_matrix/key/v2/query/{S}``,
   when the server cannot be reached or no longer lists the key.

Invariants
----------

* **Only verified keys are kept.** A key response is used only if its
  ``server_name`` is the server asked about, it has ``valid_until_ts``, and
  it carries the server's own signature made with a key it publishes in
  that response; a bad signature by such a key rejects the whole response.
  A notary's answer must also carry the notary's signature, checked with
  keys pinned in the configuration or fetched from the notary itself.
* **Validity is bounded.** A key is trusted for a time T only if T is at or
  before its ``valid_until_ts`` (for keys in ``old_verify_keys``: before
  ``expired_ts``). ``valid_until_ts`` counts for at most 7 days after the
  fetch, as the spec requires, so a server cannot make a key trusted for
  longer than that without being asked again.
* **One fetch per server at a time.** Concurrent lookups for one server's
  keys share one fetch. The task that starts it runs it; if that task is
  cancelled, a waiting one starts again, so no lookup waits on a fetch
  nobody is running. Nothing runs in the background.
* **Servers are not hammered.** After a fetch from a server completes
  (whatever it found), lookups that would fetch from it again within
  ``min_refetch_interval_ms`` use what is known instead; a flood of requests
  signed with made-up key IDs costs the named server one request per
  interval.

Our own published key response is built by
:func:`ranvier.federation.transport.routes.server_keys_json`.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import trio

from ranvier.errors import BadJsonError, InvalidSignatureError, MatrixError
from ranvier.federation.transport.client import FederationError
from ranvier.federation.transport.routes import wall_clock_ms
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.signing import (
    ED25519,
    VerifyKey,
    VerifyKeyLike,
    decode_verify_key_base64,
    decode_verify_key_bytes,
    signature_key_ids,
    verify_signed_json,
)
from ranvier.storage.records import ServerKey

__all__ = [
    "MAX_KEY_VALIDITY_MS",
    "KeyFetchClient",
    "KeyRing",
    "KeyUnavailableError",
    "ServerKeyStore",
    "TrustedKeyServer",
    "parse_key_response",
]

_log = logging.getLogger(__name__)

#: The longest a fetched key is trusted without asking again (the spec's
#: "lesser of valid_until_ts and 7 days into the future").
MAX_KEY_VALIDITY_MS: Final = 7 * 24 * 3600 * 1000
_MAX_KEY_RESPONSE_BYTES: Final = 1024 * 1024
_MEMORY_CACHE_SERVERS: Final = 10_000


class KeyUnavailableError(InvalidSignatureError):
    """No key that can be trusted for the check at hand.

    The server never published the key, it could not be fetched, or it is
    known but not valid at the time the check needs. It is an
    :class:`~ranvier.errors.InvalidSignatureError` (401 M_UNAUTHORIZED): a
    signature that cannot be checked is not accepted.
    """

    def __init__(self, server_name: str, key_id: str, reason: str) -> None:
        super().__init__(f"no usable key {key_id} of {server_name}: {reason}")
        self.server_name = server_name
        self.key_id = key_id
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TrustedKeyServer:
    """A notary asked for keys its origin cannot give.

    ``verify_keys`` pins the notary's own keys by key ID; left empty, they
    are fetched from the notary itself (never through another notary).
    """

    server_name: str
    verify_keys: Mapping[str, VerifyKeyLike] = field(default_factory=dict)


class ServerKeyStore(Protocol):
    """Where fetched keys are kept; :class:`ranvier.storage.Storage` is one."""

    async def store_server_keys(self, keys: Sequence[ServerKey]) -> None: ...

    async def get_server_keys(
        self, server_name: str, key_ids: Collection[str] | None = None
    ) -> dict[str, ServerKey]: ...


class KeyFetchClient(Protocol):
    """How keys are fetched;
    :class:`~ranvier.federation.transport.client.FederationHttpClient` is one.
    """

    async def get_json(
        self,
        destination: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        max_response_bytes: int | None = None,
    ) -> Any: ...


@dataclass(frozen=True, slots=True)
class _KnownKey:
    verify_key: VerifyKey
    valid_until_ts: int


class _Flight:
    """One fetch of a server's keys in progress, for others to wait on."""

    def __init__(self) -> None:
        self.done = trio.Event()
        #: False if the task running it was cancelled before it finished.
        self.completed = False


class KeyRing:
    """Remote servers' verify keys, for checking requests and events.

    It implements the federation server's ``KeyLookup``. ``clock`` gives
    milliseconds since the epoch (key validity is wall-clock time, which
    Trio's clock does not have). ``local_server_name`` and ``local_keys``
    answer for our own keys without any fetch.
    """

    def __init__(
        self,
        *,
        store: ServerKeyStore,
        client: KeyFetchClient,
        trusted_key_servers: Sequence[TrustedKeyServer] = (),
        local_server_name: str | None = None,
        local_keys: Sequence[VerifyKeyLike] = (),
        clock: Callable[[], int] = wall_clock_ms,
        min_refetch_interval_ms: int = 10_000,
    ) -> None:
        self._store = store
        self._client = client
        self.trusted_key_servers = tuple(trusted_key_servers)
        self._local_server_name = local_server_name
        self._local_keys = {f"{key.alg}:{key.version}": key for key in local_keys}
        self._clock = clock
        self._min_refetch_interval_ms = min_refetch_interval_ms
        self._memory: OrderedDict[str, dict[str, _KnownKey]] = OrderedDict()
        self._flights: dict[str, _Flight] = {}
        #: When each server's last fetch completed, and what went wrong in it.
        self._last_fetch: dict[str, tuple[int, list[str]]] = {}

    async def get_verify_key(
        self, server_name: str, key_id: str, *, at_ts: int | None = None
    ) -> VerifyKey:
        """Key ``key_id`` of ``server_name``, trusted at ``at_ts``.

        ``at_ts`` is in milliseconds since the epoch; None means now, which
        is what request authentication needs. To check an event's signature
        in a room version that enforces key validity, pass the event's
        ``origin_server_ts``. A key known but valid only until before
        ``at_ts`` is fetched again.

        Raises :class:`KeyUnavailableError` saying why no such key can be
        trusted.
        """
        return await self._get_verify_key(server_name, key_id, at_ts, use_notaries=True)

    async def _get_verify_key(
        self, server_name: str, key_id: str, at_ts: int | None, *, use_notaries: bool
    ) -> VerifyKey:
        if server_name == self._local_server_name:
            return self._local_key(key_id)
        needed_ts = self._clock() if at_ts is None else at_ts
        known = self._from_memory(server_name, key_id)
        if known is not None and known.valid_until_ts >= needed_ts:
            return known.verify_key
        stored = await self._store.get_server_keys(server_name, [key_id])
        self._remember(stored.values())
        known = self._from_memory(server_name, key_id)
        if known is not None and known.valid_until_ts >= needed_ts:
            return known.verify_key
        problems = await self._fetch_shared(server_name, key_id, needed_ts, use_notaries)
        known = self._from_memory(server_name, key_id)
        if known is not None and known.valid_until_ts >= needed_ts:
            return known.verify_key
        if known is not None:
            reason = (
                f"it is valid until {known.valid_until_ts}, and a check at {needed_ts}"
                " needs it later than that"
            )
        else:
            reason = "the server does not publish it"
        if problems:
            reason += " (fetching: " + "; ".join(problems) + ")"
        raise KeyUnavailableError(server_name, key_id, reason)

    async def refresh_from_origin(self, server_name: str) -> None:
        """Fetch ``server_name``'s keys from the server itself and keep them
        (for the notary endpoints, :mod:`ranvier.federation.notary`), unless
        a fetch of them is running (then wait for it) or ended moments ago.
        A failure is logged, not raised: the keys kept stay as they were.
        """
        if server_name == self._local_server_name:
            return
        problems = await self._fetch_shared(server_name, "", self._clock(), use_notaries=False)
        if problems:
            _log.info("keys of %s not refreshed: %s", server_name, "; ".join(problems))

    def _local_key(self, key_id: str) -> VerifyKey:
        key = self._local_keys.get(key_id)
        if key is None:
            raise KeyUnavailableError(
                str(self._local_server_name), key_id, "this server has no such key"
            )
        if isinstance(key, VerifyKey):
            return key
        return decode_verify_key_bytes(key_id, key.encode())

    # The memory cache

    def _from_memory(self, server_name: str, key_id: str) -> _KnownKey | None:
        keys = self._memory.get(server_name)
        if keys is None:
            return None
        self._memory.move_to_end(server_name)
        return keys.get(key_id)

    def _remember(self, keys: Collection[ServerKey]) -> None:
        for key in keys:
            try:
                verify_key = decode_verify_key_bytes(key.key_id, key.verify_key)
            except BadJsonError as exc:
                _log.warning("ignoring stored key %s of %s: %s", key.key_id, key.server_name, exc)
                continue
            by_id = self._memory.setdefault(key.server_name, {})
            self._memory.move_to_end(key.server_name)
            current = by_id.get(key.key_id)
            # As in storage, the answer valid longest wins.
            if current is None or key.valid_until_ts >= current.valid_until_ts:
                by_id[key.key_id] = _KnownKey(verify_key, key.valid_until_ts)
        while len(self._memory) > _MEMORY_CACHE_SERVERS:
            self._memory.popitem(last=False)

    # Fetching, one fetch per server at a time

    async def _fetch_shared(
        self, server_name: str, key_id: str, needed_ts: int, use_notaries: bool
    ) -> list[str]:
        """Fetch ``server_name``'s keys unless a fetch is running (then wait
        for it) or one completed moments ago. Returns the problems the
        fetch met, for error messages.
        """
        while True:
            flight = self._flights.get(server_name)
            if flight is not None:
                await flight.done.wait()
                if flight.completed:
                    return self._last_fetch.get(server_name, (0, []))[1]
                continue  # Its runner was cancelled: run it here.
            last = self._last_fetch.get(server_name)
            if last is not None and self._clock() - last[0] < self._min_refetch_interval_ms:
                return last[1]
            flight = _Flight()
            self._flights[server_name] = flight
            try:
                problems = await self._fetch(server_name, key_id, needed_ts, use_notaries)
                self._last_fetch[server_name] = (self._clock(), problems)
                flight.completed = True
                return problems
            finally:
                del self._flights[server_name]
                flight.done.set()

    async def _fetch(
        self, server_name: str, key_id: str, needed_ts: int, use_notaries: bool
    ) -> list[str]:
        problems: list[str] = []
        try:
            await self._fetch_from_origin(server_name)
        except (FederationError, MatrixError) as exc:
            problems.append(f"from {server_name}: {exc}")
        known = self._from_memory(server_name, key_id)
        if known is not None and known.valid_until_ts >= needed_ts:
            return problems
        if not use_notaries:
            return problems
        for notary in self.trusted_key_servers:
            if notary.server_name == server_name:
                continue
            try:
                await self._fetch_from_notary(notary, server_name, needed_ts)
            except (FederationError, MatrixError) as exc:
                problems.append(f"from notary {notary.server_name}: {exc}")
                continue
            known = self._from_memory(server_name, key_id)
            if known is not None and known.valid_until_ts >= needed_ts:
                break
        return problems

    async def _fetch_from_origin(self, server_name: str) -> None:
        response = await self._client.get_json(
            server_name, "/_matrix/key/v2/server", max_response_bytes=_MAX_KEY_RESPONSE_BYTES
        )
        keys = parse_key_response(
            response, server_name=server_name, from_server=server_name, fetched_ts=self._clock()
        )
        await self._keep(keys)

    async def _fetch_from_notary(
        self, notary: TrustedKeyServer, server_name: str, needed_ts: int
    ) -> None:
        response = await self._client.get_json(
            notary.server_name,
            "/_matrix/key/v2/query/" + urllib.parse.quote(server_name, safe=""),
            query={"minimum_valid_until_ts": needed_ts},
            max_response_bytes=_MAX_KEY_RESPONSE_BYTES,
        )
        if not isinstance(response, dict) or not isinstance(response.get("server_keys"), list):
            raise BadJsonError("the notary's answer has no 'server_keys' list")
        fetched_ts = self._clock()
        keys: list[ServerKey] = []
        rejected: list[str] = []
        for signed in response["server_keys"]:
            if not isinstance(signed, dict) or signed.get("server_name") != server_name:
                continue
            try:
                await self._check_notary_signature(notary, signed)
                keys.extend(
                    parse_key_response(
                        signed,
                        server_name=server_name,
                        from_server=notary.server_name,
                        fetched_ts=fetched_ts,
                    )
                )
            except (FederationError, MatrixError) as exc:
                rejected.append(str(exc))
        if not keys:
            detail = "; ".join(rejected) if rejected else f"it has no keys of {server_name}"
            raise BadJsonError(f"no usable key response: {detail}")
        await self._keep(keys)

    async def _check_notary_signature(
        self, notary: TrustedKeyServer, signed: Mapping[str, Any]
    ) -> None:
        key_ids = [
            name for name in signature_key_ids(signed, notary.server_name) if _is_ed25519(name)
        ]
        if not key_ids:
            raise InvalidSignatureError(
                f"the key response for {signed.get('server_name')} is not signed by the"
                f" notary {notary.server_name}"
            )
        for name in key_ids:
            pinned = notary.verify_keys.get(name)
            if pinned is not None:
                verify_key: VerifyKeyLike = pinned
            elif notary.verify_keys:
                # Only the pinned keys are trusted for a pinned notary.
                continue
            else:
                verify_key = await self._get_verify_key(
                    notary.server_name, name, None, use_notaries=False
                )
            verify_signed_json(signed, notary.server_name, verify_key)
            return
        raise InvalidSignatureError(
            f"the notary {notary.server_name} signed with {', '.join(key_ids)}, none of them"
            " among its configured keys"
        )

    async def _keep(self, keys: Sequence[ServerKey]) -> None:
        # Remembered first: verified keys are usable even if storing fails.
        self._remember(keys)
        await self._store.store_server_keys(keys)


def _is_ed25519(key_id: str) -> bool:
    return key_id.partition(":")[0] == ED25519


def parse_key_response(
    response: Any, *, server_name: str, from_server: str, fetched_ts: int
) -> list[ServerKey]:
    """The keys in a ``/_matrix/key/v2/server`` response, once it is verified.

    Checks that the response is ``server_name``'s, has ``valid_until_ts``,
    and is signed by ``server_name`` with at least one of the keys it
    publishes, every such signature verifying. Keys in ``verify_keys`` are
    valid until the lesser of ``valid_until_ts`` and 7 days after
    ``fetched_ts``; keys in ``old_verify_keys`` until their ``expired_ts``.
    Keys of algorithms other than ed25519 are skipped.

    Raises :class:`~ranvier.errors.BadJsonError` for a malformed response
    and :class:`~ranvier.errors.InvalidSignatureError` for a missing or bad
    self-signature.
    """
    if not isinstance(response, dict):
        raise BadJsonError("a key response must be a JSON object")
    named = response.get("server_name")
    if named != server_name:
        raise BadJsonError(f"the key response is for {named!r}, not for {server_name!r}")
    valid_until_ts = response.get("valid_until_ts")
    if not isinstance(valid_until_ts, int) or isinstance(valid_until_ts, bool):
        raise BadJsonError(f"the key response of {server_name} has no integer valid_until_ts")
    verify_keys = _key_map(response, "verify_keys", server_name, required=True)
    old_verify_keys = _key_map(response, "old_verify_keys", server_name, required=False)

    current: dict[str, VerifyKey] = {}
    for name, entry in verify_keys.items():
        key = _decode_key(server_name, name, entry)
        if key is not None:
            current[name] = key
    signed_with = [name for name in signature_key_ids(response, server_name) if name in current]
    if not signed_with:
        raise InvalidSignatureError(
            f"the key response of {server_name} is not signed by any key it publishes"
        )
    for name in signed_with:
        verify_signed_json(response, server_name, current[name])
    key_json = encode_canonical_json(response)

    valid_until = min(valid_until_ts, fetched_ts + MAX_KEY_VALIDITY_MS)
    keys = [
        ServerKey(
            server_name=server_name,
            key_id=name,
            verify_key=bytes(key),
            valid_until_ts=valid_until,
            from_server=from_server,
            fetched_ts=fetched_ts,
            key_json=key_json,
        )
        for name, key in current.items()
    ]
    for name, entry in old_verify_keys.items():
        if name in current:
            continue
        key = _decode_key(server_name, name, entry)
        if key is None:
            continue
        expired_ts = entry.get("expired_ts")
        if not isinstance(expired_ts, int) or isinstance(expired_ts, bool):
            raise BadJsonError(f"old key {name} of {server_name} has no integer expired_ts")
        keys.append(
            ServerKey(
                server_name=server_name,
                key_id=name,
                verify_key=bytes(key),
                valid_until_ts=min(expired_ts, valid_until),
                expired_ts=expired_ts,
                from_server=from_server,
                fetched_ts=fetched_ts,
                key_json=key_json,
            )
        )
    return keys


def _key_map(
    response: Mapping[str, Any], field_name: str, server_name: str, *, required: bool
) -> Mapping[str, Any]:
    value = response.get(field_name)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise BadJsonError(f"the key response of {server_name} has no {field_name} object")
    return value


def _decode_key(server_name: str, key_id: str, entry: Any) -> VerifyKey | None:
    """The key of one ``verify_keys`` entry, or None for another algorithm."""
    algorithm, sep, version = key_id.partition(":")
    if not sep or not version:
        raise BadJsonError(f"{server_name} publishes a key with a malformed ID {key_id!r}")
    if algorithm != ED25519:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
        raise BadJsonError(f"key {key_id} of {server_name} has no 'key' string")
    return decode_verify_key_base64(algorithm, version, entry["key"])
