"""The federation queries between ranvier and a real Synapse, each way:
room aliases (``/query/directory``), profiles (``/query/profile``), the
public room list (``/publicRooms``), and what Synapse makes of ranvier's
``/version`` and keys once they have talked.

ranvier acts through its Python API; Synapse's users through its client
API, which asks ranvier over federation whenever a thing named belongs to
ranvier. A missing alias, user or room list answers ``M_NOT_FOUND`` on the
side that asked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import urllib.parse
from typing import Any

import httpx
import pytest
import trio

from ranvier.errors import MatrixError
from ranvier.protocol.signing import key_id
from ranvier.server import HomeServer

from ._checks import eventually, localpart
from ._synapse import SynapseClientError, SynapseProcess, SynapseUser


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


async def _refused(user: SynapseUser, method: str, path: str, **kwargs: Any) -> SynapseClientError:
    with pytest.raises(SynapseClientError) as caught:
        await user.request(method, path, **kwargs)
    return caught.value


def _errcode(refusal: SynapseClientError) -> tuple[int, str]:
    body: dict[str, Any] = httpx.Response(refusal.status, content=refusal.body).json()
    return refusal.status, body.get("errcode", "")


async def test_aliases_resolve_and_join_each_way(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    alice = f"@alice:{ranvier.server_name}"
    zed = await synapse.register(synapse_http, localpart("zed"))

    # An alias of ranvier's: Synapse asks ranvier's /query/directory.
    ours = await ranvier.create_room(alice, preset="public_chat", name="Ours")
    our_alias = f"#lobby:{ranvier.server_name}"
    await ranvier.room_directory.create_alias(alice, our_alias, ours)
    resolved = await zed.request("GET", f"/_matrix/client/v3/directory/room/{_quote(our_alias)}")
    assert resolved["room_id"] == ours
    assert resolved["servers"] == [ranvier.server_name]
    joined = await zed.request("POST", f"/_matrix/client/v3/join/{_quote(our_alias)}", body={})
    assert joined["room_id"] == ours

    async def zed_joined() -> bool:
        state = await ranvier.storage.get_current_state_ids(ours)
        return ("m.room.member", zed.user_id) in state

    await eventually(zed_joined, "Synapse's user joined on ranvier")
    assert await zed.joined_members(ours) == {alice, zed.user_id}

    missing = f"#nothing:{ranvier.server_name}"
    refusal = await _refused(zed, "GET", f"/_matrix/client/v3/directory/room/{_quote(missing)}")
    assert _errcode(refusal) == (404, "M_NOT_FOUND")

    # An alias of Synapse's: ranvier asks Synapse's /query/directory.
    theirs = await zed.create_room(preset="public_chat", name="Theirs")
    local = localpart("hall")
    their_alias = f"#{local}:{synapse.server_name}"
    await zed.request(
        "PUT", f"/_matrix/client/v3/directory/room/{_quote(their_alias)}", body={"room_id": theirs}
    )
    found = await ranvier.room_directory.resolve(their_alias)
    assert found.room_id == theirs
    assert synapse.server_name in found.servers
    bob = f"@bob:{ranvier.server_name}"
    joined_room = await ranvier.room_joins.join(bob, their_alias)
    assert joined_room.room_id == theirs
    assert await zed.joined_members(theirs) == {zed.user_id, bob}

    with pytest.raises(MatrixError) as caught:
        await ranvier.room_directory.resolve(f"#nothing{local}:{synapse.server_name}")
    assert (caught.value.http_status, caught.value.errcode) == (404, "M_NOT_FOUND")
    with pytest.raises(MatrixError) as caught:
        await ranvier.room_joins.join(bob, f"#nothing{local}:{synapse.server_name}")
    assert (caught.value.http_status, caught.value.errcode) == (404, "M_NOT_FOUND")


async def test_profiles_are_read_each_way(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    registered = await ranvier.accounts.register("bob", None, login=False)
    bob = registered.user_id
    await ranvier.profiles.set_field(bob, bob, "displayname", "Bob of ranvier")
    await ranvier.profiles.set_field(bob, bob, "avatar_url", "mxc://ranvier.test/bob")
    zed = await synapse.register(synapse_http, localpart("zed"))

    # Synapse asks ranvier's /query/profile.
    profile = await zed.request("GET", f"/_matrix/client/v3/profile/{_quote(bob)}")
    assert profile == {"displayname": "Bob of ranvier", "avatar_url": "mxc://ranvier.test/bob"}
    name = await zed.request("GET", f"/_matrix/client/v3/profile/{_quote(bob)}/displayname")
    assert name == {"displayname": "Bob of ranvier"}
    nobody = f"@nobody:{ranvier.server_name}"
    refusal = await _refused(zed, "GET", f"/_matrix/client/v3/profile/{_quote(nobody)}")
    assert _errcode(refusal) == (404, "M_NOT_FOUND")

    # ranvier asks Synapse's.
    await zed.request(
        "PUT",
        f"/_matrix/client/v3/profile/{_quote(zed.user_id)}/displayname",
        body={"displayname": "Zed of Synapse"},
    )
    await zed.request(
        "PUT",
        f"/_matrix/client/v3/profile/{_quote(zed.user_id)}/avatar_url",
        body={"avatar_url": "mxc://synapse.test/zed"},
    )
    assert await ranvier.profiles.get_profile(zed.user_id) == {
        "displayname": "Zed of Synapse",
        "avatar_url": "mxc://synapse.test/zed",
    }
    with pytest.raises(MatrixError) as caught:
        await ranvier.profiles.get_profile(f"@nobody{localpart('x')}:{synapse.server_name}")
    assert (caught.value.http_status, caught.value.errcode) == (404, "M_NOT_FOUND")


async def test_custom_profile_fields_are_read_each_way(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    job = "org.example.job_title"
    registered = await ranvier.accounts.register("carol", None, login=False)
    carol = registered.user_id
    await ranvier.profiles.set_field(carol, carol, "m.tz", "Europe/Paris")
    await ranvier.profiles.set_field(carol, carol, job, {"title": "Smith"})
    zed = await synapse.register(synapse_http, localpart("zed"))

    # Synapse asks ranvier's /query/profile for one field, and for all.
    path = f"/_matrix/client/v3/profile/{_quote(carol)}"
    assert await zed.request("GET", f"{path}/{job}") == {job: {"title": "Smith"}}
    assert await zed.request("GET", f"{path}/m.tz") == {"m.tz": "Europe/Paris"}
    profile = await zed.request("GET", path)
    assert (profile["m.tz"], profile[job]) == ("Europe/Paris", {"title": "Smith"})
    # A field not set is left out of ranvier's answer, as the spec allows;
    # Synapse shows it to its client as null.
    unset = await zed.request("GET", f"{path}/org.example.unset")
    assert unset.get("org.example.unset") is None

    # ranvier asks Synapse's.
    own = f"/_matrix/client/v3/profile/{_quote(zed.user_id)}"
    await zed.request("PUT", f"{own}/m.tz", body={"m.tz": "Asia/Tokyo"})
    await zed.request("PUT", f"{own}/{job}", body={job: ["Cook", 2]})
    assert await ranvier.profiles.get_field(zed.user_id, job) == ["Cook", 2]
    assert await ranvier.profiles.get_field(zed.user_id, "m.tz") == "Asia/Tokyo"
    whole = await ranvier.profiles.get_profile(zed.user_id)
    assert (whole["m.tz"], whole[job]) == ("Asia/Tokyo", ["Cook", 2])
    with pytest.raises(MatrixError) as caught:
        await ranvier.profiles.get_field(zed.user_id, "org.example.unset")
    assert (caught.value.http_status, caught.value.errcode) == (404, "M_NOT_FOUND")


async def _listed(page: dict[str, Any], room_id: str) -> dict[str, Any] | None:
    await trio.lowlevel.checkpoint()
    return next((room for room in page["chunk"] if room["room_id"] == room_id), None)


async def test_public_room_lists_are_read_each_way(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    alice = f"@alice:{ranvier.server_name}"
    lobby = await ranvier.create_room(alice, preset="public_chat", name="Ranvier lobby")
    await ranvier.send_event(alice, lobby, "m.room.topic", {"topic": "hello"}, state_key="")
    await ranvier.room_list.set_visibility(alice, lobby, "public")
    unlisted = await ranvier.create_room(alice, preset="public_chat", name="Ranvier back room")
    zed = await synapse.register(synapse_http, localpart("zed"))

    # Synapse asks ranvier's /publicRooms: GET without a filter, POST with one.
    asked = {"server": ranvier.server_name}
    listed = await zed.request("GET", "/_matrix/client/v3/publicRooms", params=asked)
    assert [room["room_id"] for room in listed["chunk"]] == [lobby]
    assert listed["chunk"][0] == {
        "room_id": lobby,
        "name": "Ranvier lobby",
        "topic": "hello",
        "num_joined_members": 1,
        "world_readable": False,
        "guest_can_join": False,
        "join_rule": "public",
    }
    assert unlisted not in {room["room_id"] for room in listed["chunk"]}
    searched = await zed.request(
        "POST",
        "/_matrix/client/v3/publicRooms",
        params=asked,
        body={"filter": {"generic_search_term": "LOBBY"}},
    )
    assert [room["room_id"] for room in searched["chunk"]] == [lobby]
    nothing = await zed.request(
        "POST",
        "/_matrix/client/v3/publicRooms",
        params=asked,
        body={"filter": {"generic_search_term": "back room"}},
    )
    assert nothing["chunk"] == []

    # ranvier asks Synapse's: two rooms it published, paged one at a time.
    marker = localpart("hall")
    halls = [
        await zed.create_room(visibility="public", preset="public_chat", name=f"{marker} {n}")
        for n in range(2)
    ]
    hidden = await zed.create_room(preset="public_chat", name=f"{marker} hidden")
    theirs = synapse.server_name

    async def both_listed() -> bool:
        # Synapse lists a room once its room statistics have caught up.
        found = await ranvier.room_list.public_rooms(server=theirs, search=marker)
        return len(found["chunk"]) == len(halls)

    await eventually(both_listed, "Synapse's published rooms in its list")
    whole = await ranvier.room_list.public_rooms(server=theirs)
    for room_id in halls:
        entry = await _listed(whole, room_id)
        assert entry is not None, room_id
        assert entry["num_joined_members"] == 1
        assert entry["join_rule"] == "public"
    assert await _listed(whole, hidden) is None
    found = await ranvier.room_list.public_rooms(server=theirs, search=marker)
    assert sorted(room["room_id"] for room in found["chunk"]) == sorted(halls)
    assert {room["name"] for room in found["chunk"]} == {f"{marker} 0", f"{marker} 1"}
    first = await ranvier.room_list.public_rooms(server=theirs, search=marker, limit=1)
    assert len(first["chunk"]) == 1
    second = await ranvier.room_list.public_rooms(
        server=theirs, search=marker, limit=1, since=first["next_batch"]
    )
    assert len(second["chunk"]) == 1
    assert {room["room_id"] for room in first["chunk"] + second["chunk"]} == set(halls)


async def _register_admin(synapse: SynapseProcess, http: httpx.AsyncClient) -> SynapseUser:
    """A server admin of Synapse, through its shared-secret registration."""
    path = synapse.base_url + "/_synapse/admin/v1/register"
    nonce = (await http.get(path)).json()["nonce"]
    name, password = localpart("admin"), secrets.token_hex(8)
    mac = hmac.new(synapse.shared_secret.encode(), digestmod=hashlib.sha1)
    mac.update(b"\x00".join([nonce.encode(), name.encode(), password.encode(), b"admin"]))
    body = {
        "nonce": nonce,
        "username": name,
        "password": password,
        "admin": True,
        "mac": mac.hexdigest(),
    }
    answer = await http.post(path, json=body)
    assert answer.status_code == 200, answer.text
    registered = answer.json()
    return SynapseUser(registered["user_id"], registered["access_token"], synapse.base_url, http)


async def test_synapse_holds_ranvier_s_keys_and_no_failure(
    synapse: SynapseProcess, synapse_http: httpx.AsyncClient, ranvier: HomeServer
) -> None:
    admin = await _register_admin(synapse, synapse_http)
    # Traffic each way: a room of ranvier's that Synapse's user joins and
    # writes in, which ranvier sends events of back.
    alice = f"@alice:{ranvier.server_name}"
    room_id = await ranvier.create_room(alice, preset="public_chat")
    await admin.join(room_id, via=ranvier.server_name)
    said = await admin.send_message(room_id, "hello ranvier")
    answer = await ranvier.send_event(
        alice, room_id, "m.room.message", {"body": "hi", "msgtype": "m.text"}
    )

    async def exchanged() -> bool:
        return (await ranvier.storage.get_event(said)) is not None and (
            await admin.event(room_id, answer)
        ) is not None

    await eventually(exchanged, "messages both ways")

    # Synapse's notary answer for ranvier: the key ranvier signs with.
    keys = await synapse_http.get(
        f"{synapse.base_url}/_matrix/key/v2/query/{_quote(ranvier.server_name)}"
    )
    assert keys.status_code == 200, keys.text
    (served,) = keys.json()["server_keys"]
    assert served["server_name"] == ranvier.server_name
    expected = base64.b64encode(ranvier.signing_key.verify_key.encode()).decode().rstrip("=")
    assert served["verify_keys"] == {key_id(ranvier.signing_key): {"key": expected}}
    assert synapse.server_name in served["signatures"]

    # And the destination, after all that, has not failed.
    destination = await admin.request(
        "GET", f"/_synapse/admin/v1/federation/destinations/{_quote(ranvier.server_name)}"
    )
    assert destination["destination"] == ranvier.server_name
    assert destination["failure_ts"] is None
    assert destination["retry_interval"] == 0
