"""Asking a room's policy server to sign an event
(``POST /_matrix/policy/v1/sign``, spec v1.18, MSC4284), for
:class:`~ranvier.core.policy_servers.PolicyServers`.

The answer holds the policy server's signature alone, under its name and
the key ID ``ed25519:policy_server``; whether it verifies is checked by the
caller against the key the room's state publishes. A refusal (the spec's
400 ``M_FORBIDDEN``), a failure or an answer without that signature all
mean the same to the caller: no recommendation. Each is logged with its
reason, so an operator can tell a policy server that refuses from one that
is down.
"""

from __future__ import annotations

import logging
from typing import Final

from ranvier.errors import BadJsonError
from ranvier.federation.transport.client import FederationError, FederationHttpClient
from ranvier.protocol.events import Pdu
from ranvier.protocol.policy_servers import POLICY_KEY_ID

__all__ = ["POLICY_SIGN_PATH", "FederationPolicyClient"]

_log = logging.getLogger(__name__)

POLICY_SIGN_PATH: Final = "/_matrix/policy/v1/sign"
#: One signature under one name: anything near this size is not that.
_MAX_ANSWER_BYTES: Final = 16 * 1024


class FederationPolicyClient:
    """``POST /_matrix/policy/v1/sign`` over ``http``."""

    def __init__(self, http: FederationHttpClient) -> None:
        self._http = http

    async def ask_to_sign(self, policy_server: str, event: Pdu) -> str | None:
        # The PDU as its origin sent it; what we added locally stays here.
        pdu = {key: value for key, value in event.json.items() if key != "unsigned"}
        try:
            answer = await self._http.post_json(
                policy_server, POLICY_SIGN_PATH, pdu, max_response_bytes=_MAX_ANSWER_BYTES
            )
        except (FederationError, BadJsonError) as exc:
            _log.info("policy server did not sign %s: %s", event.event_id, exc)
            return None
        by_server = answer.get(policy_server) if isinstance(answer, dict) else None
        signature = by_server.get(POLICY_KEY_ID) if isinstance(by_server, dict) else None
        if type(signature) is not str:
            _log.info(
                "policy server %s answered for %s without an %s signature",
                policy_server,
                event.event_id,
                POLICY_KEY_ID,
            )
            return None
        return signature
