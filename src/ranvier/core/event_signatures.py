"""Signatures and content hashes of events received from other servers.

The server-server spec ("Validating hashes and signatures on received
events") checks an event's signatures first, over its redacted form, so
that a redacted copy still verifies; an event failing is dropped. Then its
content hash: an event whose hash does not match is kept in its redacted
form.

Whose signatures an event needs (:func:`required_signers`):

* its sender's server, except for an invite that redeems a third-party
  invite, which any server may send on the invitee's behalf (the auth
  rules check the third party's signature instead);
* from room version 8, for a join naming ``join_authorised_via_users_server``,
  that user's server too: the auth rules take its word for the join.

A required server's signatures are checked with those of its keys that can
be trusted at the event's ``origin_server_ts`` (every supported room
version enforces key validity); signatures with keys that cannot be had
are skipped, as the spec says, but at least one must verify, and any that
is checked must verify.

Each signature is checked against :attr:`Pdu.signed_form
<ranvier.protocol.events.Pdu.signed_form>`, the bytes the event's ID was
computed from: they are the redacted event without signatures and
``unsigned``, which is what a signature signs, so the event is not redacted
and encoded a second time. What is left is ed25519 itself, some 40 µs an
event, so batches of more than a few events are checked elsewhere, a chunk
at a time: by a :class:`SignatureOffload` (a process of its own,
:mod:`ranvier.signature_process`) when the server has one, else in worker
threads, as libsodium releases the GIL while it verifies. A caller that can
go on with each event as soon as it is checked finds the keys once
(:func:`find_signature_checks`) and runs the checks chunk by chunk itself
(:func:`run_signature_checks`, or :func:`handed_over` and
:func:`failures_once_checked`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import nacl.exceptions
import trio

from ranvier.errors import BadJsonError, InvalidSignatureError, MatrixError
from ranvier.failures import sole_failure
from ranvier.protocol.events import Pdu
from ranvier.protocol.redaction import redact
from ranvier.protocol.signing import ED25519, VerifyKeyLike
from ranvier.protocol.unpadded_base64 import decode_unpadded_base64

from .interfaces import VerifyKeySource

__all__ = [
    "THREAD_THRESHOLD",
    "OffloadUnavailable",
    "OffloadedChecks",
    "OffloadedSignatures",
    "SignatureCheck",
    "SignatureOffload",
    "SignedMessage",
    "check_event_signatures",
    "failures_once_checked",
    "find_signature_checks",
    "handed_over",
    "offload_signature_checks",
    "redacted_if_hash_mismatch",
    "required_signers",
    "run_signature_checks",
]

_log: Final = logging.getLogger(__name__)

#: Batches with more events than this are checked off the event loop.
THREAD_THRESHOLD: Final = 16
_CHUNK: Final = 256
_AUTHORISER: Final = "join_authorised_via_users_server"
_SIGNATURE_BYTES: Final = 64
_ED25519_KEY_ID: Final = ED25519 + ":"


def _server_of(user_id: str) -> str:
    return user_id.partition(":")[2]


def required_signers(event: Pdu) -> list[str]:
    """The servers whose signatures ``event`` must carry, in a fixed order."""
    servers: list[str] = []
    content = event.content
    redeems_third_party_invite = (
        event.type == "m.room.member"
        and event.membership == "invite"
        and isinstance(content.get("third_party_invite"), dict)
    )
    if not redeems_third_party_invite:
        servers.append(_server_of(event.sender))
    if (
        event.type == "m.room.member"
        and event.membership == "join"
        and event.room_version.restricted_join_rule
    ):
        authoriser = content.get(_AUTHORISER)
        if isinstance(authoriser, str) and _server_of(authoriser) not in servers:
            servers.append(_server_of(authoriser))
    return servers


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    """One event's signatures to check, with the keys found for each server."""

    event: Pdu
    keys: Mapping[str, Mapping[str, VerifyKeyLike]]


#: A signature to check elsewhere: the signer's raw ed25519 public key, the
#: signature and the signed bytes.
SignedMessage = tuple[bytes, bytes, bytes]


class OffloadUnavailable(Exception):
    """A :class:`SignatureOffload` cannot answer now; nothing was checked."""


class OffloadedSignatures(Protocol):
    """Signatures handed to a :class:`SignatureOffload`, being checked."""

    async def holds(self) -> list[bool]:
        """Whether each signature holds, in order; raises
        :class:`OffloadUnavailable` when it cannot tell."""
        ...

    def when_answered(self, callback: Callable[[list[bool] | None], None]) -> None:
        """Have ``callback`` called, on the event loop and at once if the
        answer is known, with what :meth:`holds` gives, or None where it
        raises. The callback must neither block nor raise."""
        ...


class SignatureOffload(Protocol):
    """Checks signatures away from the event loop's GIL
    (:class:`ranvier.signature_process.SignatureProcess`)."""

    async def send(self, messages: Sequence[SignedMessage]) -> OffloadedSignatures:
        """Hand ``messages`` over, returning once they are; raises
        :class:`OffloadUnavailable` when they cannot be."""
        ...


@dataclass(slots=True)
class _Plan:
    """What checking a batch takes once the shapes are checked: each
    signature with its key, and for each, the event and where it is."""

    failures: dict[str, InvalidSignatureError] = field(default_factory=dict)
    signatures: list[tuple[VerifyKeyLike, bytes, Pdu, str]] = field(default_factory=list)

    def failures_given(self, holds: Sequence[bool]) -> dict[str, InvalidSignatureError]:
        failures = self.failures
        for (_, _, event, where), held in zip(self.signatures, holds, strict=True):
            if not held and event.event_id not in failures:
                failures[event.event_id] = InvalidSignatureError(
                    f"{where} does not match the event"
                )
        return failures


def _plan(checks: Sequence[SignatureCheck]) -> _Plan:
    plan = _Plan()
    for check in checks:
        event = check.event
        try:
            for server, by_key in check.keys.items():
                if not by_key:
                    signed_with = _ed25519_key_ids(event, server)
                    raise InvalidSignatureError(
                        f"{event.event_id} has no signature from {server}"
                        if not signed_with
                        else f"{event.event_id} is signed by {server} only with keys that"
                        f" cannot be trusted at its origin_server_ts ({', '.join(signed_with)})"
                    )
                for name, key in by_key.items():
                    where = f"{event.event_id}: the signature from {server} with key {name}"
                    plan.signatures.append(
                        (key, _signature(event, server, name, where), event, where)
                    )
        except InvalidSignatureError as exc:
            plan.failures[event.event_id] = exc
    return plan


def _holds(key: VerifyKeyLike, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(message, signature)
    except nacl.exceptions.BadSignatureError:
        return False
    return True


async def check_event_signatures(
    events: Sequence[Pdu], keys: VerifyKeySource, *, offload: SignatureOffload | None = None
) -> dict[str, InvalidSignatureError]:
    """Check the signatures ``events`` need; return the failures by event ID.

    An empty answer means every event passed. Keys are looked up once per
    server and key ID where one key serves all the events that cite it.
    Batches of more than :data:`THREAD_THRESHOLD` events are checked by
    ``offload`` if given, else in worker threads, a chunk at a time.
    """
    failures: dict[str, InvalidSignatureError] = {}
    checks = await find_signature_checks(events, keys)
    if len(checks) <= THREAD_THRESHOLD:
        failures.update(run_signature_checks(checks))
        return failures

    async def check(chunk: Sequence[SignatureCheck]) -> None:
        failures.update(await failures_once_checked(chunk, await handed_over(chunk, offload)))

    if offload is None:
        for start in range(0, len(checks), _CHUNK):
            await check(checks[start : start + _CHUNK])
        return failures
    # The process answers in turn: every chunk is handed over at once.
    try:
        async with trio.open_nursery() as nursery:
            for start in range(0, len(checks), _CHUNK):
                nursery.start_soon(check, checks[start : start + _CHUNK])
    except BaseExceptionGroup as group:
        raise sole_failure(group) from None
    return failures


async def find_signature_checks(
    events: Sequence[Pdu], keys: VerifyKeySource
) -> list[SignatureCheck]:
    """The checks ``events`` need, one per event in their order, with the
    keys for them looked up (once per server and key ID where one key
    serves every event that cites it).
    """
    # Who must sign each event, and with which keys, is worked out once and
    # serves both the key lookups and the checks.
    needed = [_needed_signatures(event) for event in events]
    found = await _find_keys(events, needed, keys)
    checks: list[SignatureCheck] = []
    for event, signatures in zip(events, needed, strict=True):
        ts = event.origin_server_ts
        checks.append(
            SignatureCheck(
                event,
                {
                    server: {
                        key_id: key
                        for key_id in key_ids
                        if (key := found.get((server, key_id, ts))) is not None
                    }
                    for server, key_ids in signatures
                },
            )
        )
    return checks


def _needed_signatures(event: Pdu) -> list[tuple[str, list[str]]]:
    """Each server that must sign ``event``, with the ed25519 keys it signed with."""
    return [(server, _ed25519_key_ids(event, server)) for server in required_signers(event)]


def _ed25519_key_ids(event: Pdu, server: str) -> list[str]:
    # The typed view has checked the shape of ``signatures`` already. A
    # server signs with one key nearly always: that case is not sorted.
    names = event.signatures.get(server)
    if not names:
        return []
    if len(names) == 1:
        (name,) = names
        return [name] if name.startswith(_ED25519_KEY_ID) else []
    return sorted(name for name in names if name.startswith(_ED25519_KEY_ID))


async def _find_keys(
    events: Sequence[Pdu],
    needed: Sequence[Sequence[tuple[str, Sequence[str]]]],
    keys: VerifyKeySource,
) -> dict[tuple[str, str, int], VerifyKeyLike]:
    """The keys the events' required signatures were made with, by (server,
    key ID, time of the event): those that can be trusted at that time.

    Each key is first asked for at the latest time any event needs it; if
    it can be trusted then, it can be for every earlier event too (validity
    runs up to a time). Only if not is it asked for event by event.
    """
    wanted: dict[tuple[str, str], set[int]] = {}
    for event, signatures in zip(events, needed, strict=True):
        for server, key_ids in signatures:
            for key_id in key_ids:
                wanted.setdefault((server, key_id), set()).add(event.origin_server_ts)
    found: dict[tuple[str, str, int], VerifyKeyLike] = {}
    for (server, key_id), times in wanted.items():
        key = await _lookup(keys, server, key_id, max(times))
        if key is not None:
            found.update(((server, key_id, ts), key) for ts in times)
            continue
        for ts in sorted(times):
            key = await _lookup(keys, server, key_id, ts)
            if key is not None:
                found[(server, key_id, ts)] = key
    return found


async def _lookup(
    keys: VerifyKeySource, server: str, key_id: str, at_ts: int
) -> VerifyKeyLike | None:
    try:
        return await keys.get_verify_key(server, key_id, at_ts=at_ts)
    except MatrixError:
        return None


def run_signature_checks(checks: Sequence[SignatureCheck]) -> dict[str, InvalidSignatureError]:
    """Check each event's required signatures; the failures by event ID.

    Plain CPU work that touches nothing shared: it may run in a worker thread.
    """
    plan = _plan(checks)
    return plan.failures_given(
        [_holds(key, signature, event.signed_form) for key, signature, event, _ in plan.signatures]
    )


async def offload_signature_checks(
    checks: Sequence[SignatureCheck], offload: SignatureOffload
) -> OffloadedChecks:
    """Hand ``checks`` to ``offload``; their failures come from the answer's
    :meth:`~OffloadedChecks.failures`. Raises :class:`OffloadUnavailable`
    as the offload does.
    """
    plan = _plan(checks)
    sent = await offload.send(
        [
            (key.encode(), signature, event.signed_form)
            for key, signature, event, _ in plan.signatures
        ]
    )
    return OffloadedChecks(plan, sent)


@dataclass(frozen=True, slots=True)
class OffloadedChecks:
    """Events' signature checks handed to a :class:`SignatureOffload`
    (:func:`offload_signature_checks`)."""

    _plan: _Plan
    _sent: OffloadedSignatures

    async def failures(self) -> dict[str, InvalidSignatureError]:
        """As :func:`run_signature_checks` gives them, once the offload has
        answered; raises :class:`OffloadUnavailable` if it cannot."""
        return self._plan.failures_given(await self._sent.holds())

    def when_checked(
        self, callback: Callable[[dict[str, InvalidSignatureError] | None], None]
    ) -> None:
        """Have ``callback`` called with what :meth:`failures` gives, or
        with None where it raises, as soon as the offload answers
        (:meth:`OffloadedSignatures.when_answered`): no task waits for it.
        """
        plan = self._plan
        self._sent.when_answered(
            lambda holds: callback(None if holds is None else plan.failures_given(holds))
        )


async def handed_over(
    checks: Sequence[SignatureCheck], offload: SignatureOffload | None
) -> OffloadedChecks | None:
    """``checks`` handed to ``offload`` (:func:`offload_signature_checks`);
    None when there is no offload or it cannot take them, for
    :func:`failures_once_checked` to check them in a thread instead."""
    if offload is None:
        return None
    try:
        return await offload_signature_checks(checks, offload)
    except OffloadUnavailable as exc:
        _log.debug("checking %d events' signatures in a thread: %s", len(checks), exc)
        return None


async def failures_once_checked(
    checks: Sequence[SignatureCheck], sent: OffloadedChecks | None
) -> dict[str, InvalidSignatureError]:
    """The failures of ``checks``: the offload's answer when they were
    handed over (``sent``) and it can answer, else checked in a worker thread."""
    if sent is not None:
        try:
            return await sent.failures()
        except OffloadUnavailable as exc:
            _log.debug("checking %d events' signatures in a thread: %s", len(checks), exc)
    return await trio.to_thread.run_sync(run_signature_checks, checks)


def _signature(event: Pdu, server: str, name: str, where: str) -> bytes:
    """``server``'s signature ``name`` on ``event``, if it has the shape of one."""
    try:
        signature = decode_unpadded_base64(event.signatures[server][name])
    except BadJsonError:
        raise InvalidSignatureError(f"{where} is not valid base64") from None
    if len(signature) != _SIGNATURE_BYTES:
        raise InvalidSignatureError(
            f"{where} is {len(signature)} bytes, not the {_SIGNATURE_BYTES} of an ed25519 one"
        )
    return signature


def redacted_if_hash_mismatch(event: Pdu) -> Pdu:
    """``event``, or its redacted form when its content hash does not match.

    The redacted form has the same event ID and signatures, so it stands in
    for the event everywhere; only the content the hash did not vouch for
    is gone.
    """
    if event.content_hash_matches():
        return event
    return Pdu.from_json(
        redact(event.json, event.room_version), event.room_version, check_limits=False
    )
