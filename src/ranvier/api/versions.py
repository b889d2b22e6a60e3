"""``GET /_matrix/client/versions``: what a client asks first, before it has
logged in, to learn which versions of the spec the server speaks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ranvier.web import Request, Router

__all__ = ["SPEC_VERSIONS", "UNSTABLE_FEATURES", "add_versions_route"]

#: The spec versions whose client-server API this server implements; the
#: endpoints are those of ``/_matrix/client/v3``. Each one is a promise that
#: all it requires of a server holds (docs/decisions.md, "Spec versions
#: advertised").
SPEC_VERSIONS: Final = (
    "v1.1",
    "v1.2",
    "v1.3",
    "v1.4",
    "v1.5",
    "v1.6",
    "v1.7",
    "v1.8",
    "v1.9",
    "v1.10",
    "v1.11",
    "v1.12",
    "v1.13",
    "v1.14",
    "v1.15",
    "v1.16",
    "v1.17",
    "v1.18",
    "v1.19",
)

#: The unstable features served: simplified sliding sync (MSC4186) and
#: dehydrated devices (MSC3814), in no spec version yet, and room summaries
#: (MSC3266), stable since v1.15 but still looked for here by clients that
#: predate it.
UNSTABLE_FEATURES: Final = {
    "org.matrix.simplified_msc3575": True,
    "org.matrix.msc3814": True,
    "im.nheko.summary": True,
}


def add_versions_route(router: Router) -> None:
    """Serve ``GET /_matrix/client/versions``, which needs no access token."""

    async def get_versions(request: Request) -> Mapping[str, Any]:
        return {"versions": list(SPEC_VERSIONS), "unstable_features": UNSTABLE_FEATURES}

    router.add("GET", "/_matrix/client/versions", get_versions)
