import time

import pytest

from ranvier.errors import InvalidSignatureError
from ranvier.federation.transport.routes import (
    add_key_server_route,
    server_keys_json,
    wall_clock_ms,
)
from ranvier.federation.transport.server import Router
from ranvier.protocol.signing import (
    decode_verify_key_base64,
    encode_verify_key_base64,
    generate_signing_key,
    verify_signed_json,
)

from .conftest import NOW_MS, SERVER_NAME, VALIDITY_MS, Served


async def test_key_server_response_is_self_signed_and_shaped(served: Served) -> None:
    response = await served.client.get("/_matrix/key/v2/server")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "server_name",
        "valid_until_ts",
        "verify_keys",
        "old_verify_keys",
        "signatures",
    }
    assert body["server_name"] == SERVER_NAME
    assert body["valid_until_ts"] == NOW_MS + VALIDITY_MS
    assert body["old_verify_keys"] == {}
    assert body["verify_keys"] == {
        "ed25519:ours": {"key": encode_verify_key_base64(served.our_key.verify_key)}
    }
    assert list(body["signatures"]) == [SERVER_NAME]
    # A fetching server knows only the response: it takes the key from it and
    # checks the response with that key.
    published = decode_verify_key_base64(
        "ed25519", "ours", body["verify_keys"]["ed25519:ours"]["key"]
    )
    verify_signed_json(body, SERVER_NAME, published)
    verify_signed_json(body, SERVER_NAME, served.our_key.verify_key)
    body["valid_until_ts"] += 1
    with pytest.raises(InvalidSignatureError, match="does not match"):
        verify_signed_json(body, SERVER_NAME, published)


async def test_key_server_needs_no_signature_and_refuses_other_methods(served: Served) -> None:
    response = await served.client.post("/_matrix/key/v2/server", json={})
    assert response.status_code == 405
    assert response.json()["errcode"] == "M_UNRECOGNIZED"


def test_every_key_signs_the_response() -> None:
    keys = [generate_signing_key("a"), generate_signing_key("b")]
    body = server_keys_json("example.org", keys, 1234)
    assert body["valid_until_ts"] == 1234
    assert sorted(body["verify_keys"]) == ["ed25519:a", "ed25519:b"]
    assert sorted(body["signatures"]["example.org"]) == ["ed25519:a", "ed25519:b"]
    for key in keys:
        verify_signed_json(body, "example.org", key.verify_key)


def test_key_server_needs_keys_and_a_validity() -> None:
    with pytest.raises(ValueError, match="at least one signing key"):
        server_keys_json("example.org", [], 1)
    with pytest.raises(ValueError, match="at least one signing key"):
        add_key_server_route(Router(), server_name="example.org", signing_keys=[], validity_ms=1)
    with pytest.raises(ValueError, match="validity_ms must be positive"):
        add_key_server_route(
            Router(),
            server_name="example.org",
            signing_keys=[generate_signing_key("a")],
            validity_ms=0,
        )


def test_wall_clock_is_epoch_milliseconds() -> None:
    before = time.time() * 1000
    now = wall_clock_ms()
    after = time.time() * 1000
    assert before - 1 <= now <= after + 1
