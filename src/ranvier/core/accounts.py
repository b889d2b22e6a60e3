"""Local accounts: registration, password login, access tokens and devices.

Every authenticated client request turns its access token into a
:class:`Requester`; the request handlers of the client API take that value and
nothing else about the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Requester"]


@dataclass(frozen=True, slots=True)
class Requester:
    """Who made a client request, as its access token says.

    ``token_hash`` is the SHA-256 of the access token the request carried, so
    that logging out can drop exactly that token without the token itself ever
    being kept.
    """

    user_id: str
    device_id: str
    is_admin: bool
    token_hash: bytes
