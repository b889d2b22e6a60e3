"""Two ranvier homeservers federating for real, and a running one refusing
bad input from another server.

Each HomeServer runs whole, as ``open_homeserver`` starts it, on loopback
with TLS: its server name is ``127.0.0.1:PORT`` and its certificate comes
from one test CA (trustme), which both servers' federation clients trust
through ``federation.ca_file``, so certificates are checked as in
production. Arrival on the other side is awaited by polling its storage in
a bounded loop.

Where a server we cannot start is needed (one that sends bad requests), a
stand-in signs its requests with its own key, which it publishes on its own
key route over HTTPS, so the HomeServer's key ring fetches it as it would
any server's. The finer points of each refusal are tested on the parts
themselves (tests/federation/test_server.py, transport/test_server.py,
core/test_ingest.py); here they are checked end to end, through the wiring.
"""

from __future__ import annotations

import itertools
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
import trustme

from ranvier.config import Config, DatabaseConfig, FederationConfig, ListenerConfig, TlsConfig
from ranvier.federation.transport.client import FederationHttpClient, FederationRequestError
from ranvier.federation.transport.listener import HttpListener
from ranvier.federation.transport.routes import add_key_server_route, wall_clock_ms
from ranvier.federation.transport.server import FederationApp
from ranvier.federation.transport.tls import client_ssl_context
from ranvier.protocol.auth import auth_types_for_event
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.events import Pdu
from ranvier.protocol.hashing import compute_event_id, hash_and_sign_event
from ranvier.protocol.redaction import redact
from ranvier.protocol.room_versions import get_room_version
from ranvier.protocol.signing import SigningKey, VerifyKeyLike, generate_signing_key
from ranvier.protocol.x_matrix import format_authorization, sign_request
from ranvier.server import HomeServer, open_homeserver
from ranvier.storage import Storage
from ranvier.testing.network import free_port

SEND = "/_matrix/federation/v1/send/"
_txn_ids = itertools.count(1)


# --- Servers on loopback with certificates from one test CA ------------------------


@dataclass(frozen=True)
class Pki:
    ca: trustme.CA
    ca_file: Path
    directory: Path

    @classmethod
    def create(cls, directory: Path) -> Pki:
        ca = trustme.CA()
        ca_file = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        return cls(ca, ca_file, directory)

    def certificate(self, label: str) -> tuple[Path, Path]:
        """A certificate for 127.0.0.1 issued by the CA: chain and key files."""
        issued = self.ca.issue_cert("127.0.0.1", "localhost")
        chain = self.directory / f"{label}.crt"
        key = self.directory / f"{label}.key"
        chain.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(key))
        return chain, key


def _config(tmp_path: Path, pki: Pki, label: str) -> Config:
    port = free_port()
    certificate, key = pki.certificate(label)
    return Config(
        server_name=f"127.0.0.1:{port}",
        data_dir=tmp_path / label,
        listeners=(ListenerConfig(type="federation", host="127.0.0.1", port=port),),
        tls=TlsConfig(certificate_path=certificate, private_key_path=key),
        # Temporary files: durability is not what these tests are about.
        database=DatabaseConfig(synchronous="OFF"),
        federation=FederationConfig(ca_file=pki.ca_file, request_timeout_seconds=10),
    )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.create(tmp_path)


@asynccontextmanager
async def _two_servers(tmp_path: Path, pki: Pki) -> AsyncIterator[tuple[HomeServer, HomeServer]]:
    async with (
        open_homeserver(_config(tmp_path, pki, "a")) as a,
        open_homeserver(_config(tmp_path, pki, "b")) as b,
    ):
        yield a, b


# --- Looking into a server's storage ------------------------------------------------


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until ``check`` holds, looking every 20 ms for at most 20 s."""
    for _ in range(1000):
        if await check():
            return
        await trio.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


async def _in_dag(storage: Storage, *event_ids: str) -> bool:
    rows = await storage.get_events(event_ids)
    return all(event_id in rows and not rows[event_id].outlier for event_id in event_ids)


async def _graph_since(storage: Storage, room_id: str, stop: str) -> dict[str, bytes]:
    """The room's events from its forward extremities back to ``stop``, as
    stored; each must be accepted and in the DAG.
    """
    graph: dict[str, bytes] = {}
    level = set(await storage.get_forward_extremities(room_id))
    while level:
        rows = await storage.get_events(level)
        following: set[str] = set()
        for event_id in level:
            row = rows[event_id]
            assert not row.outlier, event_id
            assert row.rejected_reason is None, (event_id, row.rejected_reason)
            assert not row.soft_failed, event_id
            graph[event_id] = row.json
            if event_id != stop:
                prev = msgspec.json.decode(row.json)["prev_events"]
                following.update(p for p in prev if p not in graph)
        level = following
    return graph


async def _content(storage: Storage, event_id: str) -> dict[str, Any]:
    row = await storage.get_event(event_id)
    assert row is not None, event_id
    content: dict[str, Any] = msgspec.json.decode(row.json)["content"]
    return content


async def _membership(storage: Storage, room_id: str, user: str) -> str | None:
    state = await storage.get_current_state_ids(room_id)
    event_id = state.get(("m.room.member", user))
    return None if event_id is None else (await _content(storage, event_id)).get("membership")


# --- Two servers ----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["10", "12"])
async def test_two_servers_share_a_room_both_ways(tmp_path: Path, pki: Pki, version: str) -> None:
    async with _two_servers(tmp_path, pki) as (a, b):
        alice, bob = f"@alice:{a.server_name}", f"@bob:{b.server_name}"
        room_id = await a.create_room(alice, preset="public_chat", room_version=version)

        # Bob joins through A: make_join and send_join, with the full state.
        join_id = await b.join_room(bob, room_id, [a.server_name])
        assert await _in_dag(a.storage, join_id)
        assert await _in_dag(b.storage, join_id)
        assert await a.room_servers.joined_servers(room_id) == {a.server_name, b.server_name}
        assert await b.room_servers.joined_servers(room_id) == {a.server_name, b.server_name}

        # A lets Bob change state; B must have that before Bob can use it.
        levels_id = (await a.storage.get_current_state_ids(room_id))[("m.room.power_levels", "")]
        levels = await _content(a.storage, levels_id)
        levels["users"] = {**levels["users"], bob: 50}
        raised = await a.send_event(alice, room_id, "m.room.power_levels", levels, state_key="")
        await _eventually(lambda: _in_dag(b.storage, raised), "the power levels on B")

        # Messages and a state change from each side, at the same time.
        sent: dict[str, list[str]] = {"a": [], "b": []}

        async def talk(hs: HomeServer, user: str, side: str, state: tuple[str, str, str]) -> None:
            for n in range(3):
                body = {"msgtype": "m.text", "body": f"{side} {n}"}
                sent[side].append(await hs.send_event(user, room_id, "m.room.message", body))
            event_type, key, value = state
            sent[side].append(
                await hs.send_event(user, room_id, event_type, {key: value}, state_key="")
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(talk, a, alice, "a", ("m.room.topic", "topic", "from A"))
            nursery.start_soon(talk, b, bob, "b", ("m.room.name", "name", "named on B"))
        everything = [*sent["a"], *sent["b"]]

        async def converged() -> bool:
            if not (
                await _in_dag(a.storage, *everything) and await _in_dag(b.storage, *everything)
            ):
                return False
            ours = await a.storage.get_forward_extremities(room_id)
            return ours == await b.storage.get_forward_extremities(room_id)

        await _eventually(converged, "both servers to hold every event")
        state_a = await a.storage.get_current_state_ids(room_id)
        assert state_a == await b.storage.get_current_state_ids(room_id)
        assert (await _content(a.storage, state_a[("m.room.topic", "")]))["topic"] == "from A"
        assert (await _content(b.storage, state_a[("m.room.name", "")]))["name"] == "named on B"
        graph = await _graph_since(a.storage, room_id, join_id)
        assert graph == await _graph_since(b.storage, room_id, join_id)
        assert set(everything) | {join_id, raised} <= set(graph)

        # Bob leaves; A sees it and stops counting B in.
        leave_id = await b.leave_room(bob, room_id)
        await _eventually(lambda: _in_dag(a.storage, leave_id), "the leave on A")
        assert await _membership(a.storage, room_id, bob) == "leave"
        assert await a.room_servers.joined_servers(room_id) == {a.server_name}

        # An invite from A to another user of B, signed by B over /invite;
        # she then joins through A, B rejoining the room it left.
        carol = f"@carol:{b.server_name}"
        invite_id = await a.invite(alice, room_id, carol)
        on_b = await b.storage.get_event(invite_id)
        assert on_b is not None
        assert on_b.outlier
        invite = msgspec.json.decode(on_b.json)
        assert set(invite["signatures"]) == {a.server_name, b.server_name}
        assert await _membership(a.storage, room_id, carol) == "invite"
        rejoin_id = await b.join_room(carol, room_id, [a.server_name])
        assert await _membership(a.storage, room_id, carol) == "join"
        hello = await b.send_event(carol, room_id, "m.room.message", {"body": "hi"})
        await _eventually(lambda: _in_dag(a.storage, hello), "Carol's message on A")
        assert await _in_dag(b.storage, rejoin_id)


async def _listening(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return False
    await stream.aclose()
    return True


async def test_a_restarted_server_sends_what_it_owes_only_once_it_listens(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server we send to tries at once what it holds for us; were we not
    # listening yet, it would back off from us.
    config_a, config_b = _config(tmp_path, pki, "a"), _config(tmp_path, pki, "b")
    async with open_homeserver(config_a) as a:
        alice = f"@alice:{a.server_name}"
        async with open_homeserver(config_b) as b:
            room_id = await a.create_room(alice, preset="public_chat")
            await b.join_room(f"@bob:{b.server_name}", room_id, [a.server_name])
        owed = await a.send_event(alice, room_id, "m.room.message", {"body": "while B is down"})

        async def failed() -> bool:
            status = a.federation_sender.status(config_b.server_name)
            return status is not None and status.failed_attempts > 0

        await _eventually(failed, "A to fail to reach B")
    # Its backoff cleared, as an admin may: A tries B as soon as it can.
    async with open_homeserver(config_a) as a:
        await a.storage.federation_admin.clear_destination_backoff(config_b.server_name)

    port_a = config_a.listeners[0].port
    sent_while_deaf: list[str] = []
    sent = 0
    original = FederationHttpClient._send

    async def watched(self: FederationHttpClient, method: str, destination: str, *args: Any) -> Any:
        nonlocal sent
        if self.server_name == config_a.server_name:
            sent += 1
            if not await _listening(port_a):
                sent_while_deaf.append(f"{method} {destination}")
        return await original(self, method, destination, *args)

    monkeypatch.setattr(FederationHttpClient, "_send", watched)
    # A listener slow to start: what A owes B is ready to go long before.
    listen = HttpListener.run

    async def slow_listen(self: HttpListener, **kwargs: Any) -> None:
        await trio.sleep(0.5)
        await listen(self, **kwargs)

    monkeypatch.setattr(HttpListener, "run", slow_listen)
    async with open_homeserver(config_b) as b, open_homeserver(config_a) as a:
        await _eventually(lambda: _in_dag(b.storage, owed), "A's catch-up to reach B")
    assert sent > 0
    assert sent_while_deaf == []


async def test_a_room_is_joined_through_the_server_its_id_names(tmp_path: Path, pki: Pki) -> None:
    async with _two_servers(tmp_path, pki) as (a, b):
        alice, bob = f"@alice:{a.server_name}", f"@bob:{b.server_name}"
        room_id = await a.create_room(alice, preset="public_chat", room_version="10")
        assert room_id.endswith(f":{a.server_name}")
        join_id = await b.join_room(bob, room_id)
        assert await _membership(a.storage, room_id, bob) == "join"
        assert await _in_dag(b.storage, join_id)
        # A second join of a user of B is made on B, which is in the room now.
        dave = f"@dave:{b.server_name}"
        second = await b.join_room(dave, room_id)
        await _eventually(lambda: _in_dag(a.storage, second), "Dave's join on A")


# --- A running server refusing bad input ------------------------------------------------


class _NoKeys:
    async def get_verify_key(self, server_name: str, key_id: str) -> VerifyKeyLike | None:
        await trio.lowlevel.checkpoint()
        return None


@dataclass
class StandIn:
    """A server we cannot start: its key route over HTTPS, and a client
    that signs requests as it.
    """

    server_name: str
    key: SigningKey
    client: FederationHttpClient

    @classmethod
    async def start(cls, nursery: trio.Nursery, pki: Pki, label: str) -> StandIn:
        port = free_port()
        name = f"127.0.0.1:{port}"
        key = generate_signing_key("s1")
        app = FederationApp(server_name=name, key_lookup=_NoKeys())
        add_key_server_route(
            app.router, server_name=name, signing_keys=[key], validity_ms=86_400_000
        )
        certificate, private_key = pki.certificate(label)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certificate, private_key)
        listener = HttpListener(app, host="127.0.0.1", port=port, ssl_context=context)
        await nursery.start(listener.run)
        client = FederationHttpClient(
            name, key, ssl_context=client_ssl_context(ca_file=pki.ca_file), request_timeout=10
        )
        await nursery.start(client.run)
        return cls(name, key, client)

    def event(
        self,
        version: str,
        fields: Mapping[str, Any],
        *,
        key: SigningKey | None = None,
    ) -> dict[str, Any]:
        return hash_and_sign_event(dict(fields), version, self.server_name, key or self.key)

    async def send(self, hs: HomeServer, pdus: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        body = {"origin": self.server_name, "origin_server_ts": wall_clock_ms(), "pdus": pdus}
        answer = await self.client.put_json(hs.server_name, f"{SEND}t{next(_txn_ids)}", body)
        results: dict[str, Any] = answer["pdus"]
        return results

    async def join(self, hs: HomeServer, room_id: str, user: str, version: str) -> str:
        quoted = "/".join(urllib.parse.quote(part, safe="") for part in (room_id, user))
        answer = await self.client.get_json(
            hs.server_name, f"/_matrix/federation/v1/make_join/{quoted}", query={"ver": [version]}
        )
        template = answer["event"] | {"origin_server_ts": wall_clock_ms()}
        join = Pdu.from_json(self.event(version, template), version)
        path = f"/_matrix/federation/v2/send_join/{urllib.parse.quote(room_id, safe='')}/"
        await self.client.put_json(
            hs.server_name, path + urllib.parse.quote(join.event_id, safe=""), join.json
        )
        return join.event_id


async def _next_event(
    hs: HomeServer,
    room_id: str,
    sender: str,
    event_type: str,
    content: Mapping[str, Any],
    **kw: Any,
) -> dict[str, Any]:
    """The fields of an event following the room's extremities on ``hs``,
    its auth events chosen from ``hs``'s current state as the spec says.
    """
    storage = hs.storage
    version = await storage.get_room_version(room_id)
    assert version is not None
    prev = sorted(await storage.get_forward_extremities(room_id))
    rows = await storage.get_events(prev)
    fields: dict[str, Any] = {
        "type": event_type,
        "room_id": room_id,
        "sender": sender,
        "content": dict(content),
        "prev_events": prev,
        "depth": 1 + max(row.depth for row in rows.values()),
        "origin_server_ts": wall_clock_ms(),
        **kw,
    }
    draft = Pdu.from_json(
        fields | {"auth_events": [], "hashes": {"sha256": "x"}, "signatures": {}}, version
    )
    state = await storage.get_current_state_ids(room_id)
    fields["auth_events"] = [state[k] for k in sorted(auth_types_for_event(draft)) if k in state]
    return fields


def _event_id(pdu: Mapping[str, Any], version: str) -> str:
    return compute_event_id(dict(pdu), get_room_version(version))


async def test_bad_input_is_refused_with_nothing_written(
    tmp_path: Path, pki: Pki, nursery: trio.Nursery
) -> None:
    version = "10"
    async with open_homeserver(_config(tmp_path, pki, "a")) as hs:
        remote = await StandIn.start(nursery, pki, "remote")
        evil = await StandIn.start(nursery, pki, "evil")
        alice = f"@alice:{hs.server_name}"
        mallory, eve = f"@mallory:{remote.server_name}", f"@eve:{evil.server_name}"
        room_id = await hs.create_room(alice, preset="public_chat", room_version=version)
        await remote.join(hs, room_id, mallory, version)
        storage = hs.storage
        extremities = await storage.get_forward_extremities(room_id)
        state = await storage.get_current_state_ids(room_id)

        async def unchanged() -> None:
            assert await storage.get_forward_extremities(room_id) == extremities
            assert await storage.get_current_state_ids(room_id) == state

        async def not_stored(*event_ids: str) -> None:
            assert await storage.get_events(event_ids) == {}
            await unchanged()

        message = await _next_event(hs, room_id, mallory, "m.room.message", {"body": "hi"})
        signed = remote.event(version, message)
        good_id = _event_id(signed, version)
        transaction = {
            "origin": remote.server_name,
            "origin_server_ts": wall_clock_ms(),
            "pdus": [signed],
        }

        # Requests that do not authenticate: 401, nothing read.
        async with httpx.AsyncClient(
            verify=client_ssl_context(ca_file=pki.ca_file), timeout=10
        ) as http:

            async def put(
                authorization: str | None, body: bytes, uri: str = f"{SEND}raw"
            ) -> httpx.Response:
                headers = {"content-type": "application/json"}
                if authorization is not None:
                    headers["authorization"] = authorization
                url = f"https://{hs.server_name}{uri}"
                return await http.put(url, content=body, headers=headers)

            def header(
                *, key: SigningKey | None = None, destination: str | None = None, content: Any
            ) -> str:
                return format_authorization(
                    sign_request(
                        method="PUT",
                        uri=f"{SEND}raw",
                        origin=remote.server_name,
                        destination=destination or hs.server_name,
                        signing_key=key or remote.key,
                        content=content,
                    )
                )

            body = encode_canonical_json(transaction)
            cases = {
                "unsigned": None,
                "bad signature": header(key=generate_signing_key("s1"), content=transaction),
                "wrong destination": header(destination="elsewhere.test", content=transaction),
                "unknown key": header(key=generate_signing_key("s9"), content=transaction),
            }
            for problem, authorization in cases.items():
                response = await put(authorization, body)
                assert response.status_code == 401, (problem, response.text)
                assert response.json()["errcode"] == "M_UNAUTHORIZED", problem
                await not_stored(good_id)

            # Malformed JSON: 400 M_NOT_JSON.
            broken = b'{"origin": "x", "pdus": ['
            response = await put(header(content=None), broken)
            assert (response.status_code, response.json()["errcode"]) == (400, "M_NOT_JSON")
            await not_stored(good_id)

        # More than 50 PDUs: 400 M_BAD_JSON, none taken.
        many = [remote.event(version, message | {"content": {"body": f"{n}"}}) for n in range(51)]
        with pytest.raises(FederationRequestError) as refused:
            await remote.send(hs, many)
        assert (refused.value.status, refused.value.errcode) == (400, "M_BAD_JSON")
        await not_stored(*(_event_id(pdu, version) for pdu in many))

        # PDUs that fail alone, each with its error in a 200 answer.
        forged = remote.event(
            version, message | {"content": {"body": "forged"}}, key=generate_signing_key("s1")
        )
        too_big = remote.event(version, message | {"content": {"body": "x" * 70_000}})
        no_member = evil.event(version, await _next_event(hs, room_id, eve, "m.room.message", {}))
        grab = remote.event(
            version,
            await _next_event(
                hs, room_id, mallory, "m.room.power_levels", {"users": {mallory: 100}}, state_key=""
            ),
        )
        results = await remote.send(hs, [forged, too_big, grab])
        ids = {
            name: _event_id(pdu, version)
            for name, pdu in {"forged": forged, "too_big": too_big, "grab": grab}.items()
        }
        assert results[ids["forged"]]["error"].startswith("M_UNAUTHORIZED")
        assert results[ids["too_big"]]["error"].startswith("M_TOO_LARGE")
        assert results[ids["grab"]]["error"].startswith("M_FORBIDDEN")
        assert await storage.get_events([ids["forged"], ids["too_big"]]) == {}
        # An event failing the auth rules is kept rejected, outside the room's state.
        kept = await storage.get_event(ids["grab"])
        assert kept is not None
        assert kept.rejected_reason is not None
        await unchanged()

        results = await evil.send(hs, [no_member])
        (error,) = [result["error"] for result in results.values()]
        assert error.startswith("M_FORBIDDEN")
        assert "has no member" in error
        await not_stored(_event_id(no_member, version))

        # A bad content hash: taken, but only in its redacted form.
        tampered = signed | {"content": {"body": "changed on the way"}}
        results = await remote.send(hs, [tampered])
        assert results == {good_id: {}}
        row = await storage.get_event(good_id)
        assert row is not None
        assert msgspec.json.decode(row.json) == redact(signed, version)
