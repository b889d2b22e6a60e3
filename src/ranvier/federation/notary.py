"""The key server's notary endpoints: ``GET /_matrix/key/v2/query/{serverName}``
and ``POST /_matrix/key/v2/query``.

A server that cannot reach another (or does not want to ask it directly)
asks a notary for its keys. The answer is the other server's own key
response as this server fetched and verified it, kept byte for byte
(``ServerKey.key_json``) so the other server's signature still holds, with
this server's signature added. Stored keys are served while they are valid
until the time asked for (``minimum_valid_until_ts``, now by default);
otherwise the origin is asked again first, and what is stored is served
even if that fails (the requester decides whether old keys will do). A
server that cannot be reached and has no stored keys is left out: the
spec's answer is an empty ``server_keys`` list then. Asked about itself,
the server answers with its ``/_matrix/key/v2/server`` response.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final, Protocol

import msgspec

from ranvier.errors import BadJsonError, MatrixError
from ranvier.federation.transport.routes import server_keys_json, wall_clock_ms
from ranvier.protocol.signing import SigningKeyLike, sign_json
from ranvier.protocol.x_matrix import is_server_name
from ranvier.storage.records import ServerKey
from ranvier.web import Request, Router

__all__ = ["MAX_QUERIED_SERVERS", "KeyOrigin", "NotaryKeyStore", "add_notary_routes"]

#: How many servers one batch query may name: each may cost a fetch.
MAX_QUERIED_SERVERS: Final = 100


class NotaryKeyStore(Protocol):
    """Where fetched keys are kept (:class:`ranvier.storage.Storage`)."""

    async def get_server_keys(
        self, server_name: str, key_ids: Collection[str] | None = None
    ) -> dict[str, ServerKey]: ...


class KeyOrigin(Protocol):
    """Fetches a server's keys from the server itself and stores them
    (:class:`ranvier.federation.keys.KeyRing`); never raises: a failed fetch
    leaves the stored keys as they were."""

    async def refresh_from_origin(self, server_name: str) -> None: ...


def add_notary_routes(
    router: Router,
    *,
    server_name: str,
    signing_keys: Sequence[SigningKeyLike],
    validity_ms: int,
    store: NotaryKeyStore,
    origin: KeyOrigin,
    clock: Callable[[], int] = wall_clock_ms,
) -> None:
    """Serve the notary endpoints, signing with ``signing_keys``.

    ``validity_ms`` is how long our own key response is valid, as
    ``/_matrix/key/v2/server`` says (:func:`add_key_server_route`).
    """
    keys = list(signing_keys)

    async def responses(name: str, key_ids: Collection[str], minimum_ts: int) -> list[Any]:
        if name == server_name:
            return [server_keys_json(server_name, keys, clock() + validity_ms)]
        stored = await store.get_server_keys(name)
        if not _enough(stored, key_ids, minimum_ts):
            await origin.refresh_from_origin(name)
            stored = await store.get_server_keys(name)
        answers = []
        for key_json in dict.fromkeys(key.key_json for key in stored.values()):
            answer = msgspec.json.decode(key_json)
            for key in keys:
                answer = sign_json(answer, server_name, key)
            answers.append(answer)
        return answers

    async def query_one(request: Request) -> Mapping[str, Any]:
        name = _server_name(request.path_params["server_name"])
        minimum_ts = _minimum_ts(request.query_value("minimum_valid_until_ts"), clock)
        return {"server_keys": await responses(name, (), minimum_ts)}

    async def query_batch(request: Request) -> Mapping[str, Any]:
        criteria = _criteria(request.content)
        answers: list[Any] = []
        for name, by_key in criteria.items():
            if not is_server_name(name):
                continue  # Nothing could be fetched from it.
            minimum_ts = max((ts for ts in by_key.values() if ts is not None), default=clock())
            answers += await responses(name, tuple(by_key), minimum_ts)
        return {"server_keys": answers}

    router.add("GET", "/_matrix/key/v2/query/{server_name}", query_one, authenticated=False)
    router.add("POST", "/_matrix/key/v2/query", query_batch, authenticated=False)


def _enough(stored: Mapping[str, ServerKey], key_ids: Collection[str], minimum_ts: int) -> bool:
    """Whether the stored keys answer the query: each key asked for (or,
    with none named, some key) valid until ``minimum_ts``."""
    if key_ids:
        return all(
            key_id in stored and stored[key_id].valid_until_ts >= minimum_ts for key_id in key_ids
        )
    return any(key.valid_until_ts >= minimum_ts for key in stored.values())


def _server_name(value: str) -> str:
    if not is_server_name(value):
        raise MatrixError(
            f"{urllib.parse.quote(value)!r} is not a server name",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    return value


def _minimum_ts(value: str | None, clock: Callable[[], int]) -> int:
    if value is None:
        return clock()
    try:
        return int(value)
    except ValueError:
        raise MatrixError(
            f"minimum_valid_until_ts must be an integer, not {value!r}",
            errcode="M_INVALID_PARAM",
            http_status=400,
        ) from None


def _criteria(content: Any) -> dict[str, dict[str, int | None]]:
    """A batch query's servers, each with its key IDs and the time each is
    wanted valid until (None: now)."""
    if not isinstance(content, dict):
        raise MatrixError(
            "the request body must be a JSON object", errcode="M_NOT_JSON", http_status=400
        )
    servers = content.get("server_keys")
    if not isinstance(servers, dict):
        raise BadJsonError("'server_keys' must be an object of server names")
    if len(servers) > MAX_QUERIED_SERVERS:
        raise MatrixError(
            f"at most {MAX_QUERIED_SERVERS} servers may be queried at once",
            errcode="M_INVALID_PARAM",
            http_status=400,
        )
    criteria: dict[str, dict[str, int | None]] = {}
    for name, by_key in servers.items():
        if not isinstance(by_key, dict):
            raise BadJsonError(f"the query for {name!r} must be an object of key IDs")
        wanted: dict[str, int | None] = {}
        for key_id, criterion in by_key.items():
            if not isinstance(criterion, dict):
                raise BadJsonError(f"the criteria for {key_id!r} of {name!r} must be an object")
            ts = criterion.get("minimum_valid_until_ts")
            if ts is not None and (not isinstance(ts, int) or isinstance(ts, bool)):
                raise BadJsonError(
                    f"minimum_valid_until_ts of {key_id!r} of {name!r} must be an integer"
                )
            wanted[key_id] = ts
        criteria[name] = wanted
    return criteria
