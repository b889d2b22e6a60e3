"""Pushers as clients set them: ``POST /pushers/set`` and ``GET /pushers``.

A pusher names a push gateway (an ``http`` pusher's ``data.url``) and the
key the gateway knows the device by. :mod:`ranvier.core.push_sender` sends
notifications to them. Only ``http`` pushers are taken: this server sends
no e-mail, so an ``email`` pusher is refused rather than kept and never
served.

Checks follow the spec's ``/pushers/set``: the fields a kind needs are
present and of their types, ``app_id`` at most 64 characters, ``pushkey``
at most 512 bytes, and an ``http`` pusher's URL is an HTTPS URL whose path
is ``/_matrix/push/v1/notify``. A refused request changes nothing.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import msgspec

from ranvier.errors import MatrixError
from ranvier.storage.pushers import PusherRecord

__all__ = ["GATEWAY_PATH", "PusherStore", "Pushers", "shown_pusher"]

#: The path every push gateway serves notifications on.
GATEWAY_PATH: Final = "/_matrix/push/v1/notify"
_MAX_APP_ID: Final = 64
_MAX_PUSHKEY_BYTES: Final = 512
_MAX_PROFILE_TAG: Final = 32


class PusherStore(Protocol):
    """Storage's side: :class:`ranvier.storage.pushers.PusherStorage`."""

    async def set_pusher(self, pusher: PusherRecord, *, append: bool) -> None: ...

    async def delete_pusher(self, user_id: str, app_id: str, pushkey: str) -> None: ...

    async def pushers_of(self, user_id: str) -> list[PusherRecord]: ...


def _missing(key: str) -> MatrixError:
    return MatrixError(f"'{key}' is required", errcode="M_MISSING_PARAM", http_status=400)


def _invalid(message: str) -> MatrixError:
    return MatrixError(message, errcode="M_INVALID_PARAM", http_status=400)


def _string(body: Mapping[str, Any], key: str) -> str:
    if key not in body or body[key] is None:
        raise _missing(key)
    value = body[key]
    if not isinstance(value, str):
        raise _invalid(f"'{key}' must be a string")
    return value


def shown_pusher(pusher: PusherRecord) -> dict[str, Any]:
    """A pusher as ``GET /pushers`` lists it."""
    shown: dict[str, Any] = {
        "pushkey": pusher.pushkey,
        "kind": pusher.kind,
        "app_id": pusher.app_id,
        "app_display_name": pusher.app_display_name,
        "device_display_name": pusher.device_display_name,
        "lang": pusher.lang,
        "data": msgspec.json.decode(pusher.data_json),
    }
    if pusher.profile_tag is not None:
        shown["profile_tag"] = pusher.profile_tag
    return shown


class Pushers:
    """Setting, deleting and listing a user's pushers.

    ``allow_http`` lets a gateway URL be plain HTTP (a gateway on the same
    host, tests); the spec asks for HTTPS. ``on_change`` is called after
    each change (the push sender's :meth:`~ranvier.core.push_sender.PushSender.pushers_changed`).
    """

    def __init__(
        self,
        store: PusherStore,
        *,
        allow_http: bool = False,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._allow_http = allow_http
        self._clock_ms = clock_ms
        self._on_change = on_change

    async def list(self, user_id: str) -> list[dict[str, Any]]:
        return [shown_pusher(pusher) for pusher in await self._store.pushers_of(user_id)]

    async def set(
        self, user_id: str, body: Mapping[str, Any], *, device_id: str | None = None
    ) -> None:
        """Apply a ``POST /pushers/set`` body: set, replace or (``kind``
        null) delete the user's pusher of ``app_id`` and ``pushkey``. The
        pusher belongs to ``device_id``'s session, when the request came
        from one: logging the device out deletes it.
        """
        pushkey = _string(body, "pushkey")
        if len(pushkey.encode("utf-8")) > _MAX_PUSHKEY_BYTES:
            raise _invalid(f"'pushkey' is longer than {_MAX_PUSHKEY_BYTES} bytes")
        app_id = _string(body, "app_id")
        if len(app_id) > _MAX_APP_ID:
            raise _invalid(f"'app_id' is longer than {_MAX_APP_ID} characters")
        if "kind" not in body:
            raise _missing("kind")
        kind = body["kind"]
        if kind is None:
            await self._store.delete_pusher(user_id, app_id, pushkey)
            self._on_change()
            return
        if not isinstance(kind, str):
            raise _invalid("'kind' must be a string or null")
        if kind != "http":
            raise _invalid(f"pushers of kind {kind!r} are not supported here; only 'http'")
        app_display_name = _string(body, "app_display_name")
        device_display_name = _string(body, "device_display_name")
        lang = _string(body, "lang")
        profile_tag = body.get("profile_tag")
        if profile_tag is not None and (
            not isinstance(profile_tag, str) or len(profile_tag) > _MAX_PROFILE_TAG
        ):
            raise _invalid(
                f"'profile_tag' must be a string of at most {_MAX_PROFILE_TAG} characters"
            )
        append = body.get("append", False)
        if not isinstance(append, bool):
            raise _invalid("'append' must be a boolean")
        data = body.get("data")
        if data is None:
            raise _missing("data")
        if not isinstance(data, dict):
            raise _invalid("'data' must be an object")
        self._check_url(data.get("url"))
        data_format = data.get("format")
        if data_format is not None and not isinstance(data_format, str):
            raise _invalid("'data.format' must be a string")
        await self._store.set_pusher(
            PusherRecord(
                user_id=user_id,
                app_id=app_id,
                pushkey=pushkey,
                kind=kind,
                app_display_name=app_display_name,
                device_display_name=device_display_name,
                profile_tag=profile_tag,
                lang=lang,
                data_json=msgspec.json.encode(data),
                pushkey_ts=self._clock_ms(),
                device_id=device_id,
            ),
            append=append,
        )
        self._on_change()

    def _check_url(self, url: object) -> None:
        if url is None:
            raise _missing("data.url")
        if not isinstance(url, str):
            raise _invalid("'data.url' must be a string")
        parts = urllib.parse.urlsplit(url)
        schemes = ("https", "http") if self._allow_http else ("https",)
        if parts.scheme not in schemes or not parts.hostname:
            raise _invalid(f"'data.url' must be an {' or '.join(schemes).upper()} URL")
        if parts.path != GATEWAY_PATH:
            raise _invalid(f"'data.url' must have the path {GATEWAY_PATH}")
