import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from ranvier.federation.transport.request_signing import XMatrixAuth
from ranvier.protocol.signing import decode_signing_key_base64, generate_signing_key
from ranvier.protocol.x_matrix import parse_authorization, verify_request

from .conftest import REMOTE, SERVER_NAME, Served

PEER = json.loads(
    (
        Path(__file__).parent.parent.parent
        / "data"
        / "peer-vectors"
        / "gomatrixserverlib-x-matrix.json"
    ).read_text("utf-8")
)


@pytest.mark.parametrize("case", PEER["requests"], ids=lambda case: case["method"])
def test_reproduces_peer_signatures(case: dict[str, Any]) -> None:
    algorithm, version = PEER["signing_key"]["key_id"].split(":")
    key = decode_signing_key_base64(algorithm, version, PEER["signing_key"]["seed_base64"])
    auth = XMatrixAuth(origin=case["origin"], destination=case["destination"], signing_key=key)
    body = None if case["body_text"] is None else case["body_text"].encode("utf-8")
    request = httpx.Request(
        case["method"], f"https://{case['destination']}{case['uri']}", content=body
    )
    # httpx keeps the target as given, so the signature is the peer's.
    assert request.url.raw_path.decode("ascii") == case["uri"]
    header = auth.authorization_for(request)
    assert parse_authorization(header) == parse_authorization(case["expected_header"])


def test_signs_the_target_as_httpx_encodes_it() -> None:
    key = generate_signing_key("k")
    auth = XMatrixAuth(origin=REMOTE, destination=SERVER_NAME, signing_key=key)
    request = httpx.Request(
        "GET",
        "https://localhost:8448/_matrix/federation/v1/state/!r:x",
        params={"event_id": "$a/b+c"},
    )
    uri = request.url.raw_path.decode("ascii")
    assert uri.startswith("/_matrix/federation/v1/state/!r:x?event_id=")
    authorization = parse_authorization(auth.authorization_for(request))
    verify_request(
        authorization, method="GET", uri=uri, our_server_name=SERVER_NAME, verify_key=key.verify_key
    )


def test_refuses_a_body_that_is_not_json() -> None:
    auth = XMatrixAuth(
        origin=REMOTE, destination=SERVER_NAME, signing_key=generate_signing_key("k")
    )
    request = httpx.Request("PUT", "https://localhost:8448/x", content=b"not json")
    with pytest.raises(ValueError, match="a federation request body must be JSON"):
        auth.authorization_for(request)


async def test_signed_request_goes_through_the_server(served: Served) -> None:
    async def whoami(request: Any) -> dict[str, Any]:
        return {"origin": request.origin, "content": request.content}

    served.app.router.add("POST", "/_matrix/federation/v1/whoami", whoami)
    auth = XMatrixAuth(origin=REMOTE, destination=SERVER_NAME, signing_key=served.remote_key)
    response = await served.client.post(
        "/_matrix/federation/v1/whoami", json={"n": [1, "two"]}, auth=auth
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"origin": REMOTE, "content": {"n": [1, "two"]}}
    assert response.request.headers["authorization"].startswith('X-Matrix origin="remote.example"')
