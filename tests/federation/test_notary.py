"""The notary endpoints over real HTTPS: server A answers for server B's
keys with B's own signed response, A's signature added, fetched from B
when needed and served from storage once B is gone."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import httpx

from ranvier.federation.notary import MAX_QUERIED_SERVERS
from ranvier.protocol.signing import decode_verify_key_base64, verify_signed_json
from ranvier.testing.homeserver import TestHomeserver, open_test_homeserver
from ranvier.testing.network import Pki

QUERY = "/_matrix/key/v2/query"


async def _own_keys(http: httpx.AsyncClient, hs: TestHomeserver) -> dict[str, Any]:
    response = await http.get(hs.federation_url + "/_matrix/key/v2/server")
    assert response.status_code == 200
    answer: dict[str, Any] = response.json()
    return answer


def _check_signed(response: dict[str, Any], server_name: str, published: dict[str, Any]) -> None:
    """``response`` carries a valid signature of ``server_name`` by each
    key ``published`` lists."""
    assert published["verify_keys"]
    for key_id, entry in published["verify_keys"].items():
        algorithm, _, version = key_id.partition(":")
        key = decode_verify_key_base64(algorithm, version, entry["key"])
        verify_signed_json(response, server_name, key)


def _refused(response: httpx.Response, status: int, errcode: str) -> None:
    assert (response.status_code, response.json()["errcode"]) == (status, errcode)
    assert isinstance(response.json()["error"], str)


async def test_a_notary_relays_another_servers_keys_signed_by_both(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    async with (
        open_test_homeserver(tmp_path / "a", federation=pki) as a,
        httpx.AsyncClient(base_url=a.federation_url, verify=pki.client_context()) as http,
    ):
        a_keys = await _own_keys(http, a)
        async with open_test_homeserver(tmp_path / "b", federation=pki) as b:
            b_keys = await _own_keys(http, b)
            name = urllib.parse.quote(b.server_name, safe="")
            response = await http.get(f"{QUERY}/{name}")
            assert response.status_code == 200
            (relayed,) = response.json()["server_keys"]
            assert relayed["server_name"] == b.server_name
            assert relayed["verify_keys"] == b_keys["verify_keys"]
            _check_signed(relayed, b.server_name, b_keys)
            _check_signed(relayed, a.server_name, a_keys)
            assert set(relayed["signatures"]) == {a.server_name, b.server_name}
            (key_id,) = b_keys["verify_keys"]
            batch = await http.post(
                QUERY,
                json={
                    "server_keys": {
                        b.server_name: {key_id: {"minimum_valid_until_ts": 0}},
                        a.server_name: {},
                    }
                },
            )
            assert batch.status_code == 200
            by_server = {answer["server_name"]: answer for answer in batch.json()["server_keys"]}
            assert set(by_server) == {a.server_name, b.server_name}
            assert by_server[b.server_name] == relayed
            # About itself, the notary answers with its own key response.
            assert by_server[a.server_name]["verify_keys"] == a_keys["verify_keys"]
            _check_signed(by_server[a.server_name], a.server_name, a_keys)
        # B is gone: its stored keys are still served, even when a later
        # validity is asked for than they have.
        for params in ({}, {"minimum_valid_until_ts": 2**52}):
            response = await http.get(f"{QUERY}/{name}", params=params)
            assert response.status_code == 200
            assert response.json()["server_keys"] == [relayed]
        assert (await http.post(QUERY, json={"server_keys": {}})).json() == {"server_keys": []}


async def test_bad_queries_are_refused(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path)
    async with (
        open_test_homeserver(tmp_path / "a", federation=pki) as a,
        httpx.AsyncClient(base_url=a.federation_url, verify=pki.client_context()) as http,
    ):
        _refused(await http.get(f"{QUERY}/not%20a%20server"), 400, "M_INVALID_PARAM")
        _refused(
            await http.get(f"{QUERY}/{a.server_name}", params={"minimum_valid_until_ts": "soon"}),
            400,
            "M_INVALID_PARAM",
        )
        _refused(await http.post(QUERY, content=b"[]"), 400, "M_NOT_JSON")
        too_many: dict[str, Any] = {f"s{n}.example": {} for n in range(MAX_QUERIED_SERVERS + 1)}
        _refused(await http.post(QUERY, json={"server_keys": too_many}), 400, "M_INVALID_PARAM")
        bodies: list[dict[str, Any]] = [
            {},
            {"server_keys": []},
            {"server_keys": {"b.example": []}},
            {"server_keys": {"b.example": {"ed25519:x": 1}}},
            {"server_keys": {"b.example": {"ed25519:x": {"minimum_valid_until_ts": "1"}}}},
            {"server_keys": {"b.example": {"ed25519:x": {"minimum_valid_until_ts": True}}}},
        ]
        for body in bodies:
            _refused(await http.post(QUERY, json=body), 400, "M_BAD_JSON")
