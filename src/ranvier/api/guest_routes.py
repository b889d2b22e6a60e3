"""The routes a guest account may call (client-server API, "Guest Access").

:class:`ranvier.api.auth.Auth` checks every request a guest's access token
makes against :data:`GUEST_ROUTES` and answers 403
``M_GUEST_ACCESS_FORBIDDEN`` for any other, so no handler checks for
guests itself. The table is the spec's lists, path by path, under every
version prefix the client API serves, plus what the spec's own lists need
to be usable:

* ``POST /join/{roomIdOrAlias}``: the same join as ``/rooms/{roomId}/join``
  (and the same guest check: :class:`ranvier.core.guests.GuestJoins`),
  which clients use for both.
* ``POST /logout`` and ``/logout/all``: a guest ends its session as anyone does.
* ``POST /user/{userId}/filter`` and ``GET .../filter/{filterId}``: the
  filters ``GET /sync`` is asked with.
* ``PUT /rooms/{roomId}/state/{eventType}``: the spec's state route with
  an empty state key, which the router keeps apart.
* Media downloads and thumbnails under ``/_matrix/media/{v3,r0}`` as well
  as ``/_matrix/client/v1/media``: the same content under the older paths.
* The room summary (``/_matrix/client/v1/room_summary/{roomIdOrAlias}``
  and its unstable forms): open to anyone without a token, it would be
  odd to refuse it to a guest for sending one.

Only ``displayname`` is listed among profile fields, so a guest may set or
clear its display name and no other field (the spec's rule).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["GUEST_ROUTES", "guest_may_call"]

_CLIENT: Final = "/_matrix/client/{version}"
_MEDIA: Final = "/_matrix/client/v1/media"
_LEGACY_MEDIA: Final = "/_matrix/media/{version}"

#: Each route a guest may call: method, and path under the client API's
#: version prefix (``/_matrix/client/v3``, ``r0`` or ``v1``) unless it
#: starts with ``/_matrix/`` itself.
GUEST_ROUTES: Final[tuple[tuple[str, str], ...]] = (
    # Reading events and media.
    ("GET", "/rooms/{roomId}/state"),
    ("GET", "/rooms/{roomId}/context/{eventId}"),
    ("GET", "/rooms/{roomId}/event/{eventId}"),
    ("GET", "/rooms/{roomId}/state/{eventType}"),
    ("GET", "/rooms/{roomId}/state/{eventType}/{stateKey}"),
    ("GET", "/rooms/{roomId}/messages"),
    ("GET", "/rooms/{roomId}/members"),
    ("GET", "/rooms/{roomId}/initialSync"),
    ("GET", "/sync"),
    ("GET", "/events"),
    ("GET", f"{_MEDIA}/download/{{serverName}}/{{mediaId}}"),
    ("GET", f"{_MEDIA}/download/{{serverName}}/{{mediaId}}/{{fileName}}"),
    ("GET", f"{_MEDIA}/thumbnail/{{serverName}}/{{mediaId}}"),
    ("GET", f"{_LEGACY_MEDIA}/download/{{serverName}}/{{mediaId}}"),
    ("GET", f"{_LEGACY_MEDIA}/download/{{serverName}}/{{mediaId}}/{{fileName}}"),
    ("GET", f"{_LEGACY_MEDIA}/thumbnail/{{serverName}}/{{mediaId}}"),
    ("GET", "/_matrix/client/v1/room_summary/{roomIdOrAlias}"),
    ("GET", "/_matrix/client/unstable/im.nheko.summary/rooms/{roomIdOrAlias}/summary"),
    ("GET", "/_matrix/client/unstable/im.nheko.summary/summary/{roomIdOrAlias}"),
    # Sending events.
    ("POST", "/rooms/{roomId}/join"),
    ("POST", "/join/{roomIdOrAlias}"),
    ("POST", "/rooms/{roomId}/leave"),
    ("PUT", "/rooms/{roomId}/send/{eventType}/{txnId}"),
    ("PUT", "/rooms/{roomId}/state/{eventType}"),
    ("PUT", "/rooms/{roomId}/state/{eventType}/{stateKey}"),
    ("PUT", "/sendToDevice/{eventType}/{txnId}"),
    # The account's upkeep.
    ("PUT", "/profile/{userId}/displayname"),
    ("DELETE", "/profile/{userId}/displayname"),
    ("GET", "/devices"),
    ("GET", "/devices/{deviceId}"),
    ("PUT", "/devices/{deviceId}"),
    ("GET", "/account/whoami"),
    ("POST", "/logout"),
    ("POST", "/logout/all"),
    ("POST", "/user/{userId}/filter"),
    ("GET", "/user/{userId}/filter/{filterId}"),
    # End-to-end encryption.
    ("POST", "/keys/upload"),
    ("POST", "/keys/query"),
    ("POST", "/keys/claim"),
)

_PARAM: Final = re.compile(r"\{[A-Za-z]+\}")


def _pattern(path: str) -> str:
    """The regular expression of one table path: a parameter is one
    segment, percent-encoded as sent."""
    if not path.startswith("/_matrix/"):
        path = _CLIENT + path
    pieces = re.split(r"(\{[A-Za-z]+\})", path)
    parts: list[str] = []
    for piece in pieces:
        if piece == "{version}":
            parts.append(r"(?:v3|r0|v1)")
        elif _PARAM.fullmatch(piece):
            parts.append(r"[^/]+")
        else:
            parts.append(re.escape(piece))
    return "".join(parts)


def _compiled() -> dict[str, re.Pattern[str]]:
    by_method: dict[str, list[str]] = {}
    for method, path in GUEST_ROUTES:
        by_method.setdefault(method, []).append(_pattern(path))
    return {
        method: re.compile("|".join(f"(?:{p})" for p in patterns))
        for method, patterns in by_method.items()
    }


_ALLOWED: Final = _compiled()


def guest_may_call(method: str, path: str) -> bool:
    """Whether a guest may make a ``method`` request of ``path`` (as sent,
    still percent-encoded, without the query)."""
    pattern = _ALLOWED.get(method)
    return pattern is not None and pattern.fullmatch(path) is not None
