"""Third-party lookups over real HTTP: ``/thirdparty/*`` passed on to
application services listening on loopback, their answers merged, and a
service that fails, is late or answers garbage left out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from _bridges import answers, open_bridges
from _client import Client

from ranvier.appservice_client import MAX_THIRD_PARTY_ANSWER_BYTES
from ranvier.testing.homeserver import open_test_homeserver

_FIELD_TYPES = {
    "network": {"regexp": "[a-z.]+", "placeholder": "libera.chat"},
    "channel": {"regexp": "#.+", "placeholder": "#matrix"},
}
_IRC_A: dict[str, Any] = {
    "user_fields": ["network", "nickname"],
    "location_fields": ["network", "channel"],
    "icon": "mxc://example.org/irc",
    "field_types": _FIELD_TYPES,
    "instances": [
        {
            "desc": "Libera",
            "network_id": "libera",
            "fields": {"network": "libera.chat"},
            "icon": "mxc://example.org/libera",
            "unknown": "left out",
        },
        # Older services leave out network_id and fields.
        {"desc": "Without an ID"},
    ],
}
_IRC_B: dict[str, Any] = {
    "user_fields": ["nickname", "server"],
    "location_fields": ["channel"],
    "icon": "mxc://example.org/other-irc",
    "field_types": {
        "channel": {"regexp": "other", "placeholder": "other"},
        "server": {"regexp": ".+", "placeholder": "irc.oftc.net"},
    },
    "instances": [
        {"desc": "OFTC", "network_id": "oftc", "fields": {"network": "oftc.net"}},
        # The same network ID as the other service's: a different instance.
        {"desc": "Libera too", "network_id": "libera", "fields": {}},
    ],
}
_GITTER: dict[str, Any] = {
    "user_fields": ["username"],
    "location_fields": ["room"],
    "icon": "mxc://example.org/gitter",
    "field_types": {"username": {"regexp": "@.+", "placeholder": "@someone"}},
    "instances": [{"desc": "Gitter", "network_id": "gitter", "fields": {}}],
}

_IRC_MERGED: dict[str, Any] = {
    "user_fields": ["network", "nickname", "server"],
    "location_fields": ["network", "channel"],
    "icon": "mxc://example.org/irc",
    "field_types": {**_FIELD_TYPES, "server": {"regexp": ".+", "placeholder": "irc.oftc.net"}},
    "instances": [
        {
            "desc": "Libera",
            "network_id": "libera",
            "fields": {"network": "libera.chat"},
            "icon": "mxc://example.org/libera",
            "instance_id": "a|libera",
        },
        {"desc": "Without an ID", "fields": {}},
        {
            "desc": "OFTC",
            "network_id": "oftc",
            "fields": {"network": "oftc.net"},
            "instance_id": "b|oftc",
        },
        {"desc": "Libera too", "network_id": "libera", "fields": {}, "instance_id": "b|libera"},
    ],
}
_GITTER_SHOWN: dict[str, Any] = {
    **_GITTER,
    "instances": [
        {"desc": "Gitter", "network_id": "gitter", "fields": {}, "instance_id": "b|gitter"}
    ],
}


_GOOD_A = answers({"protocol/irc": (200, _IRC_A)})
_GOOD_B = answers({"protocol/irc": (200, _IRC_B), "protocol/gitter": (200, _GITTER)})


async def test_protocols_merge_the_metadata_of_every_service(tmp_path: Path) -> None:
    async with open_bridges(tmp_path, _GOOD_A, _GOOD_B) as env:
        c, alice = env.client, env.alice
        assert await c.ok(alice, "GET", "/thirdparty/protocols") == {
            "irc": _IRC_MERGED,
            "gitter": _GITTER_SHOWN,
        }
        # Each service was asked about its own protocols, with its hs_token
        # (the stand-in refuses any other with 403).
        assert sorted(path for path, _ in env.a.third_party) == ["protocol/irc"]
        assert sorted(path for path, _ in env.b.third_party) == ["protocol/gitter", "protocol/irc"]
        assert env.c.third_party == []

        # The answers are remembered: the same again, nobody asked again.
        assert await c.ok(alice, "GET", "/thirdparty/protocol/irc") == _IRC_MERGED
        assert await c.ok(alice, "GET", "/thirdparty/protocol/gitter") == _GITTER_SHOWN
        assert await c.ok(alice, "GET", "/thirdparty/protocols") == {
            "irc": _IRC_MERGED,
            "gitter": _GITTER_SHOWN,
        }
        assert [path for path, _ in env.a.third_party] == ["protocol/irc"]
        # Declared by no service, or only by one that cannot be asked.
        for protocol in ("matrix", "xmpp"):
            await c.refused(
                alice, "GET", f"/thirdparty/protocol/{protocol}", status=404, errcode="M_NOT_FOUND"
            )
        assert len(env.a.third_party) + len(env.b.third_party) == 3


async def _never(path: str, query: list[tuple[str, str]]) -> tuple[int, Any]:
    await trio.sleep_forever()
    raise AssertionError("unreachable")


_TOO_BIG = b'{"instances": [], "icon": "' + b"x" * MAX_THIRD_PARTY_ANSWER_BYTES + b'"}'


@pytest.mark.parametrize(
    "bad",
    [
        (500, {"errcode": "M_UNKNOWN", "error": "down"}),
        (404, {"errcode": "M_NOT_FOUND", "error": "no such protocol"}),
        (200, b"not JSON"),
        (200, b"[" * 200 + b"]" * 200),
        (200, _TOO_BIG),
        (200, ["a list"]),
        (200, {"user_fields": ["x"]}),
        (200, {**_IRC_B, "instances": "several"}),
        (200, {**_IRC_B, "user_fields": "nickname"}),
        (200, {**_IRC_B, "location_fields": [1]}),
        (200, {**_IRC_B, "field_types": {"server": "text"}}),
        (200, {**_IRC_B, "icon": 7}),
        (200, {**_IRC_B, "user_fields": [f"f{n}" for n in range(1001)]}),
    ],
    ids=[
        "500",
        "404",
        "not JSON",
        "nested too deep",
        "too big",
        "a list",
        "no instances",
        "instances not a list",
        "user_fields not a list",
        "location_fields not strings",
        "field type not an object",
        "icon not a string",
        "too many fields",
    ],
)
async def test_a_service_that_answers_garbage_is_left_out(
    tmp_path: Path, bad: tuple[int, Any]
) -> None:
    b = answers({"protocol/irc": bad, "protocol/gitter": bad})
    async with open_bridges(tmp_path, _GOOD_A, b) as env:
        only_a = {**_IRC_A, "instances": _IRC_MERGED["instances"][:2]}
        assert await env.client.ok(env.alice, "GET", "/thirdparty/protocols") == {"irc": only_a}
        assert await env.client.ok(env.alice, "GET", "/thirdparty/protocol/irc") == only_a
        # Gitter's only service failed: as unknown as a protocol nobody bridges.
        await env.client.refused(
            env.alice, "GET", "/thirdparty/protocol/gitter", status=404, errcode="M_NOT_FOUND"
        )


async def test_a_service_that_does_not_answer_in_time_is_left_out(tmp_path: Path) -> None:
    async with open_bridges(tmp_path, _GOOD_A, _never) as env:
        env.hs.server.third_party_lookups.timeout_s = 0.5
        with trio.fail_after(10):
            shown = await env.client.ok(env.alice, "GET", "/thirdparty/protocol/irc")
        assert shown == {**_IRC_A, "instances": _IRC_MERGED["instances"][:2]}
        assert ("protocol/irc", []) in env.b.third_party


async def test_a_service_with_a_wrong_hs_token_is_left_out(tmp_path: Path) -> None:
    async with open_bridges(tmp_path, _GOOD_A, _GOOD_B) as env:
        env.b.hs_token = "another"
        assert await env.client.ok(env.alice, "GET", "/thirdparty/protocols") == {
            "irc": {**_IRC_A, "instances": _IRC_MERGED["instances"][:2]}
        }


async def test_bad_instances_are_left_out_one_by_one(tmp_path: Path) -> None:
    instances: list[Any] = [
        "not an instance",
        {"network_id": "nodesc", "fields": {}},
        {"desc": 5, "network_id": "n", "fields": {}},
        {"desc": "Fields not an object", "network_id": "f", "fields": []},
        {"desc": "Numeric network", "network_id": 3, "fields": {}},
        {"desc": "Empty network", "network_id": "", "fields": {}},
        {"desc": "Icon not a string", "network_id": "i", "fields": {}, "icon": {}},
        {"desc": "Kept", "network_id": "kept", "fields": {"x": "y"}},
        {"desc": "Repeated", "network_id": "kept", "fields": {}},
    ]
    b = answers({"protocol/gitter": (200, {**_GITTER, "instances": instances})})
    async with open_bridges(tmp_path, _GOOD_A, b) as env:
        gitter = await env.client.ok(env.alice, "GET", "/thirdparty/protocol/gitter")
        assert gitter["instances"] == [
            {"desc": "Kept", "network_id": "kept", "fields": {"x": "y"}, "instance_id": "b|kept"}
        ]


_LOCATION_A = {"alias": "#libera_#matrix:irc.example", "protocol": "irc", "fields": {"n": "1"}}
_LOCATION_B = {"alias": "#oftc_#matrix:irc.example", "protocol": "irc", "fields": {}}
_USER_A = {"userid": "@libera_bob:irc.example", "protocol": "irc", "fields": {"nick": "bob"}}
_USER_B = {"userid": "@oftc_bob:irc.example", "protocol": "irc", "fields": {}}


async def test_forward_lookups_are_asked_of_the_protocol_s_services(tmp_path: Path) -> None:
    a = answers(
        {
            "location/irc": (
                200,
                [
                    {**_LOCATION_A, "extra": True},
                    {**_LOCATION_A, "protocol": "gitter"},
                    {**_LOCATION_A, "alias": "not an alias"},
                    {**_LOCATION_A, "alias": "#no-server"},
                    {**_LOCATION_A, "fields": "none"},
                    {"alias": _LOCATION_A["alias"], "protocol": "irc"},
                    "junk",
                ],
            ),
            "user/irc": (
                200,
                [_USER_A, {**_USER_A, "userid": "bob"}, {**_USER_A, "protocol": None}],
            ),
        }
    )
    b = answers(
        {
            "location/irc": (200, [_LOCATION_B]),
            "user/irc": (200, [_USER_B]),
            "location/gitter": (200, {"not": "a list"}),
        }
    )
    async with open_bridges(tmp_path, a, b) as env:
        c, alice = env.client, env.alice
        fields = {"network": "libera.chat", "channel": "#matrix"}
        found = await c.ok(alice, "GET", "/thirdparty/location/irc", params=fields)
        assert found == [_LOCATION_A, _LOCATION_B]
        expected_query = sorted(fields.items())
        assert sorted(env.a.third_party[-1][1]) == expected_query
        assert env.b.third_party[-1] == ("location/irc", list(fields.items()))

        # The access token is this server's, not the service's.
        users = await c.ok(
            None,
            "GET",
            "/thirdparty/user/irc",
            params={"access_token": alice.access_token, "nick": "bob"},
        )
        assert users == [_USER_A, _USER_B]
        assert env.a.third_party[-1] == ("user/irc", [("nick", "bob")])
        assert env.b.third_party[-1] == ("user/irc", [("nick", "bob")])

        # Only b bridges gitter, and its answer is no list: nothing found.
        asked_a = len(env.a.third_party)
        await c.refused(
            alice, "GET", "/thirdparty/location/gitter", status=404, errcode="M_NOT_FOUND"
        )
        assert env.b.third_party[-1][0] == "location/gitter"
        assert len(env.a.third_party) == asked_a
        # Nothing found at all is 404, as the spec says.
        await c.refused(alice, "GET", "/thirdparty/user/gitter", status=404, errcode="M_NOT_FOUND")
        # A protocol nobody bridges is asked of nobody.
        asked = len(env.a.third_party) + len(env.b.third_party) + len(env.c.third_party)
        for kind in ("location", "user"):
            await c.refused(
                alice, "GET", f"/thirdparty/{kind}/matrix", status=404, errcode="M_NOT_FOUND"
            )
        assert len(env.a.third_party) + len(env.b.third_party) + len(env.c.third_party) == asked


async def test_a_failing_service_leaves_the_others_lookups(tmp_path: Path) -> None:
    a = answers({"location/irc": (200, [_LOCATION_A])})
    b = answers({"location/irc": (502, {"errcode": "M_UNKNOWN", "error": "network down"})})
    async with open_bridges(tmp_path, a, b) as env:
        found = await env.client.ok(env.alice, "GET", "/thirdparty/location/irc")
        assert found == [_LOCATION_A]
        assert env.b.third_party == [("location/irc", [])]


async def test_reverse_lookups_are_asked_of_every_service_with_a_protocol(
    tmp_path: Path,
) -> None:
    alias = "#libera_#matrix:irc.example"
    user = "@libera_bob:irc.example"
    a = answers(
        {
            # a bridges no gitter: its gitter location is left out.
            "location": (200, [_LOCATION_A, {**_LOCATION_A, "protocol": "gitter"}]),
            "user": (200, "nobody"),
        }
    )
    gitter_location = {**_LOCATION_B, "protocol": "gitter"}
    b = answers({"location": (200, [gitter_location]), "user": (200, [_USER_B])})
    async with open_bridges(tmp_path, a, b) as env:
        c, alice = env.client, env.alice
        found = await c.ok(alice, "GET", "/thirdparty/location", params={"alias": alias})
        assert found == [_LOCATION_A, gitter_location]
        assert env.a.third_party == [("location", [("alias", alias)])]
        assert env.b.third_party == [("location", [("alias", alias)])]
        # c declares no protocol: it has no network to map to.
        assert env.c.third_party == []

        assert await c.ok(alice, "GET", "/thirdparty/user", params={"userid": user}) == [_USER_B]
        assert env.a.third_party[-1] == ("user", [("userid", user)])

        for path, param, bad in (
            ("/thirdparty/location", "alias", "libera"),
            ("/thirdparty/location", "alias", "#nothing"),
            ("/thirdparty/user", "userid", "bob"),
        ):
            await c.refused(
                alice, "GET", path, params={param: bad}, status=400, errcode="M_INVALID_PARAM"
            )
            await c.refused(alice, "GET", path, status=400, errcode="M_MISSING_PARAM")


async def test_without_services_no_protocol_is_known(tmp_path: Path) -> None:
    async with open_test_homeserver(tmp_path / "hs") as hs, hs.client() as http:
        c = Client(hs, http)
        alice = await hs.register_user("alice")
        assert await c.ok(alice, "GET", "/thirdparty/protocols") == {}
        for kind in ("protocol", "location", "user"):
            await c.refused(
                alice, "GET", f"/thirdparty/{kind}/irc", status=404, errcode="M_NOT_FOUND"
            )
        assert await c.ok(alice, "GET", "/thirdparty/location", params={"alias": "#a:hs"}) == []
        assert await c.ok(alice, "GET", "/thirdparty/user", params={"userid": "@a:hs"}) == []
        for path in ("/thirdparty/location", "/thirdparty/user"):
            await c.refused(alice, "GET", path, status=400, errcode="M_MISSING_PARAM")
        for path in (
            "/thirdparty/protocols",
            "/thirdparty/protocol/irc",
            "/thirdparty/location/irc",
            "/thirdparty/user/irc",
            "/thirdparty/location?alias=%23a:hs",
            "/thirdparty/user?userid=@a:hs",
        ):
            await c.refused(None, "GET", path, status=401, errcode="M_MISSING_TOKEN")
