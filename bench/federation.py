"""Incoming federation into a running HomeServer, beside ed25519 verification.

A real HomeServer runs on loopback with TLS. Stand-in remotes (servers we
do not start whole: a key route and a sink for transactions over HTTPS,
and a client signing as them)
join a room on it through make_join and send_join, then push signed
transactions of 50 messages each with ``PUT /send``, each sending its next
transaction as soon as the previous one is answered, as the spec has a
sender do. The events, and the requests carrying them (the transaction
bodies and their X-Matrix signatures), are made before the clock starts,
and the remotes' requests go out as prepared bytes from a process of
their own (:mod:`bench._federation_sender`), over one kept-alive TLS
connection each, reading just the status and body of each answer: signing
and a full HTTP client are the remote's cost, not ours. A round's clock
runs from its first request until its last PDU is in the room, not until
its last answer, so a server that answered once PDUs were queued would
not look faster than one that answers once they are written; nor until
the sending process has exited, which is its cost, not ours. The sender
pushes three rounds of 40 transactions, each round a chain of its own after the
last; ``pdus_per_s`` is the best round (all are in ``pdus_per_s_rounds``),
as the reference below is the best of its repeats: slower rounds measure
what else the machine was doing.

Every PDU costs the receiver at least one ed25519 verification (the
origin's signature), so the reference is the rate at which PyNaCl verifies
signatures of event-sized messages on this machine, in the same run:
``fraction_of_limit`` says how much of that ceiling ingestion reaches with
everything else it does (TLS, X-Matrix, parsing, auth checks, state,
SQLite). The sending process runs on the same machine, so its side of TLS
takes CPU time the server could have used, as it would from a server
sharing the machine; it no longer takes the server's own event loop and
GIL, which no real remote does.

Then four remotes burst into the room at once, each on its own chain of
events, so the room forks four ways; ``burst_lost_pdus`` counts PDUs
answered with an error or not found accepted in the room afterwards.

``ingester_only_pdus_per_s`` hands the same kind of PDUs to the ingester
directly, without HTTP, TLS and request signatures, to tell their cost
from ingestion's own (the best of as many rounds).
``write_requests_per_transaction`` counts the requests the storage actor
took per transaction in the back-to-back run
(events, state groups, the transaction record where it does not go with
the events): what batching a transaction's events saves shows there.

The database uses ``synchronous = NORMAL``: with WAL, a commit survives a
crash of the process, though not a power cut, as with FULL, which every
commit would wait on the disk for.
"""

from __future__ import annotations

import itertools
import os
import pickle
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.signing
import trio
import trustme

from bench import JsonLines, ops_per_second, signature_process_wanted
from ranvier.config import Config, DatabaseConfig, FederationConfig, ListenerConfig, TlsConfig
from ranvier.federation.transport.client import FederationHttpClient
from ranvier.federation.transport.listener import HttpListener
from ranvier.federation.transport.routes import add_key_server_route, wall_clock_ms
from ranvier.federation.transport.server import FederationApp, Request
from ranvier.federation.transport.tls import client_ssl_context
from ranvier.protocol.canonical import decode_canonical_json, encode_canonical_json
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import hash_and_sign_event
from ranvier.protocol.redaction import redact
from ranvier.protocol.signing import SigningKey, VerifyKeyLike, generate_signing_key
from ranvier.protocol.x_matrix import format_authorization, sign_request
from ranvier.server import HomeServer, open_homeserver

VERSION = "10"
PDUS_PER_TRANSACTION = 50
#: Transactions the single sender pushes back to back, in each of its rounds.
STEADY_TRANSACTIONS = 40
STEADY_ROUNDS = 3
#: Remotes bursting at once, and transactions each.
BURST_REMOTES = 4
BURST_TRANSACTIONS = 10
SEND = "/_matrix/federation/v1/send/"
_ROOT = Path(__file__).resolve().parent.parent
_txn_ids = itertools.count(1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass(frozen=True)
class _Pki:
    ca: trustme.CA
    ca_file: Path
    directory: Path

    def certificate(self, label: str) -> tuple[Path, Path]:
        issued = self.ca.issue_cert("127.0.0.1")
        chain, key = self.directory / f"{label}.crt", self.directory / f"{label}.key"
        chain.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(key))
        return chain, key


class _NoKeys:
    async def get_verify_key(self, server_name: str, key_id: str) -> VerifyKeyLike | None:
        await trio.lowlevel.checkpoint()
        return None


async def _take_transaction(request: Request) -> Mapping[str, Any]:
    await trio.lowlevel.checkpoint()
    return {"pdus": {}}


@dataclass
class _Remote:
    """A stand-in remote: its key route over HTTPS and a client signing as it."""

    server_name: str
    key: SigningKey
    client: FederationHttpClient
    user: str

    @classmethod
    async def start(cls, nursery: trio.Nursery, pki: _Pki, label: str) -> _Remote:
        port = _free_port()
        name = f"127.0.0.1:{port}"
        key = generate_signing_key("r1")
        app = FederationApp(server_name=name, key_lookup=_NoKeys())
        add_key_server_route(app.router, server_name=name, signing_keys=[key], validity_ms=3600_000)
        # A sink for what the server sends on (the other remotes' joins): a
        # remote that refused it would have the server retrying, with TLS
        # handshakes and backoff, all through the run.
        app.router.add("PUT", SEND + "{txn_id}", _take_transaction, authenticated=False)
        certificate, private_key = pki.certificate(label)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certificate, private_key)
        await nursery.start(HttpListener(app, host="127.0.0.1", port=port, ssl_context=context).run)
        client = FederationHttpClient(
            name, key, ssl_context=client_ssl_context(ca_file=pki.ca_file), request_timeout=60
        )
        await nursery.start(client.run)
        return cls(name, key, client, f"@{label}:{name}")

    async def join(self, hs: HomeServer, room_id: str) -> None:
        quoted = "/".join(urllib.parse.quote(p, safe="") for p in (room_id, self.user))
        answer = await self.client.get_json(
            hs.server_name, f"/_matrix/federation/v1/make_join/{quoted}", query={"ver": [VERSION]}
        )
        template = answer["event"] | {"origin_server_ts": wall_clock_ms()}
        join = Pdu.from_json(
            hash_and_sign_event(template, VERSION, self.server_name, self.key), VERSION
        )
        path = "/_matrix/federation/v2/send_join/" + "/".join(
            urllib.parse.quote(p, safe="") for p in (room_id, join.event_id)
        )
        await self.client.put_json(hs.server_name, path, join.json)

    def chain(
        self, room_id: str, auth: Sequence[str], prev: Sequence[str], depth: int, count: int
    ) -> list[tuple[str, dict[str, Any]]]:
        """``count`` messages, each after the one before, the first after ``prev``."""
        events = []
        for n in range(count):
            fields = {
                "type": "m.room.message",
                "room_id": room_id,
                "sender": self.user,
                "content": {"msgtype": "m.text", "body": f"message {n} from {self.user}"},
                "prev_events": list(prev),
                "auth_events": list(auth),
                "depth": depth + n,
                "origin_server_ts": wall_clock_ms() + n,
            }
            event = Pdu.from_json(
                hash_and_sign_event(fields, VERSION, self.server_name, self.key), VERSION
            )
            events.append((event.event_id, event.json))
            prev = [event.event_id]
        return events

    def prepare(
        self, hs: HomeServer, events: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[bytes]:
        """``events`` in transactions, each a whole signed ``PUT /send`` request."""
        requests = []
        for start in range(0, len(events), PDUS_PER_TRANSACTION):
            batch = [pdu for _, pdu in events[start : start + PDUS_PER_TRANSACTION]]
            path = f"{SEND}b{next(_txn_ids)}"
            body = encode_canonical_json(
                {"origin": self.server_name, "origin_server_ts": wall_clock_ms(), "pdus": batch}
            )
            authorization = sign_request(
                method="PUT",
                uri=path,
                origin=self.server_name,
                destination=hs.server_name,
                signing_key=self.key,
                content=decode_canonical_json(body),
            )
            head = (
                f"PUT {path} HTTP/1.1\r\nhost: {hs.server_name}\r\n"
                "content-type: application/json\r\n"
                f"content-length: {len(body)}\r\n"
                f"authorization: {format_authorization(authorization)}\r\n\r\n"
            )
            requests.append(head.encode("ascii") + body)
        return requests


async def _accepted(hs: HomeServer, event_ids: Sequence[str]) -> int:
    found = 0
    for start in range(0, len(event_ids), 500):
        rows = await hs.storage.get_events(event_ids[start : start + 500])
        found += sum(
            1
            for row in rows.values()
            if not row.outlier and row.rejected_reason is None and not row.soft_failed
        )
    return found


async def _send_from_another_process(
    hs: HomeServer,
    directory: Path,
    ca_file: Path,
    senders: Sequence[Sequence[bytes]],
    last_event_ids: Sequence[str],
) -> tuple[int, float]:
    """Has a sender process push each list of ``senders`` over a connection
    of its own, all at once (see :mod:`bench._federation_sender`); returns
    the PDUs answered with an error and the seconds from the first request
    until each of ``last_event_ids`` (the last of each sender's chain) is
    stored. The process starts and connects before the clock starts, and
    its exit comes after the clock stops.
    """
    requests_file = directory / f"requests-{next(_txn_ids)}.pickle"
    requests_file.write_bytes(pickle.dumps([list(requests) for requests in senders]))
    host, port = hs.server_name.rsplit(":", 1)
    command = [
        sys.executable,
        "-m",
        "bench._federation_sender",
        host,
        port,
        str(ca_file),
        str(requests_file),
    ]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=_ROOT
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        lines = JsonLines(process.stdout)
        with trio.fail_after(600):
            await lines.next()  # connected
            started = time.perf_counter()
            await process.stdin.send_all(b"go\n")
            errors: list[int] = (await lines.next())["errors"]
            await _settled(hs, last_event_ids)
            elapsed = time.perf_counter() - started
            await process.wait()
        if process.returncode != 0:
            raise AssertionError(f"the sender process exited with {process.returncode}")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return sum(errors), elapsed


async def _settled(hs: HomeServer, last_event_ids: Sequence[str]) -> None:
    """Waits until each of ``last_event_ids`` is stored, or a minute has
    passed: a server may answer a transaction once it is durably queued,
    and PDUs count once they are in the room, not once they are answered.
    Each is the last of a chain, so the rest of its chain is handled by then.
    """
    with trio.move_on_after(60):
        # Storage has no wait for a given event; a poll is one indexed read.
        while len(await hs.storage.get_events(last_event_ids)) < len(last_event_ids):  # noqa: ASYNC110
            await trio.sleep(0.002)


async def _auth_for(hs: HomeServer, room_id: str, user: str) -> list[str]:
    state = await hs.storage.get_current_state_ids(room_id)
    return [
        state[("m.room.create", "")],
        state[("m.room.power_levels", "")],
        state[("m.room.member", user)],
    ]


async def _start_of_chain(hs: HomeServer, room_id: str) -> tuple[list[str], int]:
    prev = sorted(await hs.storage.get_forward_extremities(room_id))
    rows = await hs.storage.get_events(prev)
    return prev, 1 + max(row.depth for row in rows.values())


async def _main(directory: Path) -> dict[str, Any]:
    ca = trustme.CA()
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    pki = _Pki(ca, ca_file, directory)
    port = _free_port()
    certificate, key = pki.certificate("hs")
    config = Config(
        server_name=f"127.0.0.1:{port}",
        data_dir=directory / "hs",
        listeners=(ListenerConfig(type="federation", host="127.0.0.1", port=port),),
        tls=TlsConfig(certificate_path=certificate, private_key_path=key),
        database=DatabaseConfig(synchronous="NORMAL"),
        federation=FederationConfig(ca_file=ca_file, signature_process=signature_process_wanted()),
    )
    figures: dict[str, Any] = {}
    async with open_homeserver(config) as hs, trio.open_nursery() as nursery:
        alice = f"@alice:{hs.server_name}"
        room_id = await hs.create_room(alice, preset="public_chat", room_version=VERSION)
        remotes = [
            await _Remote.start(nursery, pki, f"remote{n}") for n in range(1 + BURST_REMOTES)
        ]
        for remote in remotes:
            await remote.join(hs, room_id)

        # One sender, back to back, in rounds of its own chain each; the
        # best round counts, as the best repeat does for the reference.
        steady = remotes[0]
        auth = await _auth_for(hs, room_id, steady.user)
        rounds: list[float] = []
        pdus_sent = accepted = errors = write_requests = 0
        for _ in range(STEADY_ROUNDS):
            prev, depth = await _start_of_chain(hs, room_id)
            events = steady.chain(
                room_id, auth, prev, depth, STEADY_TRANSACTIONS * PDUS_PER_TRANSACTION
            )
            requests = steady.prepare(hs, events)
            requests_before = hs.storage.actor.stats.requests
            failed, elapsed = await _send_from_another_process(
                hs, directory, ca_file, [requests], [events[-1][0]]
            )
            errors += failed
            write_requests += hs.storage.actor.stats.requests - requests_before
            reached = await _accepted(hs, [event_id for event_id, _ in events])
            pdus_sent += len(events)
            accepted += reached
            rounds.append(reached / elapsed)
        figures["pdus_sent"] = pdus_sent
        figures["pdus_accepted"] = accepted
        figures["pdu_errors"] = errors
        figures["pdus_per_s"] = max(rounds)
        figures["pdus_per_s_rounds"] = rounds
        figures["transactions_per_s"] = max(rounds) / PDUS_PER_TRANSACTION
        figures["write_requests_per_transaction"] = write_requests / (
            STEADY_ROUNDS * STEADY_TRANSACTIONS
        )

        # The same work handed to the ingester directly, without HTTP, TLS,
        # X-Matrix or the transaction record: what ingestion itself costs.
        direct_rounds: list[float] = []
        for _ in range(STEADY_ROUNDS):
            prev, depth = await _start_of_chain(hs, room_id)
            direct = steady.chain(
                room_id, auth, prev, depth, STEADY_TRANSACTIONS * PDUS_PER_TRANSACTION
            )
            raws = [encode_canonical_json(pdu) for _, pdu in direct]
            started = time.perf_counter()
            for start in range(0, len(raws), PDUS_PER_TRANSACTION):
                await hs.ingester.receive_pdus(
                    steady.server_name, raws[start : start + PDUS_PER_TRANSACTION]
                )
            elapsed = time.perf_counter() - started
            reached = await _accepted(hs, [event_id for event_id, _ in direct])
            direct_rounds.append(reached / elapsed)
        figures["ingester_only_pdus_per_s"] = max(direct_rounds)

        # Four remotes at once, each on its own chain from the same point.
        prev, depth = await _start_of_chain(hs, room_id)
        chains = []
        for remote in remotes[1:]:
            auth = await _auth_for(hs, room_id, remote.user)
            chains.append(
                remote.chain(room_id, auth, prev, depth, BURST_TRANSACTIONS * PDUS_PER_TRANSACTION)
            )
        prepared = [
            remote.prepare(hs, chain) for remote, chain in zip(remotes[1:], chains, strict=True)
        ]
        burst_errors, elapsed = await _send_from_another_process(
            hs, directory, ca_file, prepared, [chain[-1][0] for chain in chains]
        )
        sent = [event_id for chain in chains for event_id, _ in chain]
        reached = await _accepted(hs, sent)
        figures["burst_remotes"] = BURST_REMOTES
        figures["burst_pdus_sent"] = len(sent)
        figures["burst_pdu_errors"] = burst_errors
        figures["burst_lost_pdus"] = len(sent) - reached
        figures["burst_pdus_per_s"] = reached / elapsed
        # Signatures the server's signature process checked: 0 means every
        # batch was checked in threads (the process off, or failing).
        process = hs.signature_process
        figures["signature_process_checked"] = process.checked if process is not None else 0
        nursery.cancel_scope.cancel()
    return figures


def _verify_limit() -> float:
    """PyNaCl's ed25519 verifications per second of an event's redacted form."""
    key = generate_signing_key("v1")
    event = {
        "type": "m.room.message",
        "room_id": "!room:example.org",
        "sender": "@alice:example.org",
        "content": {"msgtype": "m.text", "body": "message 1 from @alice:example.org"},
        "prev_events": ["$" + "a" * 43],
        "auth_events": ["$" + "b" * 43, "$" + "c" * 43, "$" + "d" * 43],
        "depth": 12,
        "origin_server_ts": 1_700_000_000_000,
        "hashes": {"sha256": "e" * 43},
    }
    message = encode_canonical_json(redact(event, VERSION))
    signature = key.sign(message).signature
    verify_key: nacl.signing.VerifyKey = key.verify_key
    return ops_per_second(lambda: verify_key.verify(message, signature))


def run() -> dict[str, Any]:
    limit = _verify_limit()
    with tempfile.TemporaryDirectory(prefix="ranvier-bench-") as directory:
        figures = trio.run(_main, Path(directory))
    figures["verify_limit_per_s"] = limit
    figures["fraction_of_limit"] = figures["pdus_per_s"] / limit
    figures["cpus"] = os.cpu_count()
    order = ["pdus_per_s", "verify_limit_per_s", "fraction_of_limit"]
    return {key: figures[key] for key in order} | {
        key: value for key, value in figures.items() if key not in order
    }
