"""Asking a room's policy server to sign an event
(``POST /_matrix/policy/v1/sign``, spec v1.18, MSC4284), for
:class:`~ranvier.core.policy_servers.PolicyServers`.

The answer holds the policy server's signature alone, under its name and
the key ID ``ed25519:policy_server``; whether it verifies is checked by the
caller against the key the room's state publishes. For an event received
from another server (:meth:`FederationPolicyClient.ask_to_sign`), a refusal
(the spec's 400 ``M_FORBIDDEN``), a failure or an answer without that
signature all mean the same: no recommendation. Each is logged with its
reason, so an operator can tell a policy server that refuses from one that
is down. For one of our users' events
(:meth:`FederationPolicyClient.request_signature`) the reason is raised, to
answer the client with: the policy server's own error, verbatim, as the
spec asks, or 502 when it gave none.
"""

from __future__ import annotations

import logging
from typing import Final

from ranvier.errors import BadJsonError, MatrixError
from ranvier.federation.transport.client import (
    FederationError,
    FederationHttpClient,
    FederationRequestError,
)
from ranvier.protocol.events import Pdu
from ranvier.protocol.policy_servers import POLICY_KEY_ID

__all__ = ["POLICY_SIGN_PATH", "FederationPolicyClient"]

_log = logging.getLogger(__name__)

POLICY_SIGN_PATH: Final = "/_matrix/policy/v1/sign"
#: One signature under one name: anything near this size is not that.
_MAX_ANSWER_BYTES: Final = 16 * 1024
#: The statuses of a refusal the spec names (400 ``M_FORBIDDEN``, 403 for an
#: ACL) and of a rate limit: a client is answered with these as they came.
_REFUSALS: Final = frozenset({400, 403, 429})


class FederationPolicyClient:
    """``POST /_matrix/policy/v1/sign`` over ``http``."""

    def __init__(self, http: FederationHttpClient) -> None:
        self._http = http

    async def ask_to_sign(self, policy_server: str, event: Pdu) -> str | None:
        try:
            return await self.request_signature(policy_server, event)
        except MatrixError as exc:
            _log.info("policy server did not sign %s: %s", event.event_id, exc.message)
            return None

    async def request_signature(self, policy_server: str, event: Pdu) -> str:
        # The PDU as its origin sent it; what we added locally stays here.
        pdu = {key: value for key, value in event.json.items() if key != "unsigned"}
        try:
            answer = await self._http.post_json(
                policy_server, POLICY_SIGN_PATH, pdu, max_response_bytes=_MAX_ANSWER_BYTES
            )
        except FederationRequestError as exc:
            if exc.errcode and exc.status in _REFUSALS:
                # The policy server's refusal, as it gave it. Its other
                # statuses (a 401 for our request's signature, a 404 for a
                # room it does not protect) would mislead a client.
                extra = {}
                if isinstance(exc.body, dict) and type(exc.body.get("retry_after_ms")) is int:
                    extra["retry_after_ms"] = exc.body["retry_after_ms"]
                raise MatrixError(
                    exc.error or exc.errcode, errcode=exc.errcode, http_status=exc.status, **extra
                ) from None
            raise _unanswered(policy_server, str(exc)) from None
        except (FederationError, BadJsonError) as exc:
            raise _unanswered(policy_server, str(exc)) from None
        by_server = answer.get(policy_server) if isinstance(answer, dict) else None
        signature = by_server.get(POLICY_KEY_ID) if isinstance(by_server, dict) else None
        if type(signature) is not str:
            raise _unanswered(policy_server, f"answered without an {POLICY_KEY_ID} signature")
        return signature


def _unanswered(policy_server: str, reason: str) -> MatrixError:
    return MatrixError(
        f"the room's policy server {policy_server} did not sign the event: {reason}",
        errcode="M_UNKNOWN",
        http_status=502,
    )
