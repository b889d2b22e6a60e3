import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ranvier.errors import BadJsonError, InvalidSignatureError
from ranvier.protocol.canonical import encode_canonical_json
from ranvier.protocol.signing import (
    SigningKey,
    VerifyKey,
    decode_signing_key_base64,
    decode_verify_key_base64,
    generate_signing_key,
)
from ranvier.protocol.x_matrix import (
    XMatrixAuthorization,
    format_authorization,
    is_server_name,
    parse_authorization,
    request_signing_json,
    sign_request,
    split_server_name,
    verify_request,
)

DATA = Path(__file__).parent.parent / "data"
PEER = json.loads((DATA / "peer-vectors" / "gomatrixserverlib-x-matrix.json").read_text("utf-8"))
SPEC = json.loads((DATA / "spec-vectors" / "x-matrix-authorization.json").read_text("utf-8"))
IDENTIFIERS = json.loads((DATA / "spec-vectors" / "identifiers-and-limits.json").read_text("utf-8"))
PEER_KEY = PEER["signing_key"]
PEER_REQUESTS = PEER["requests"]


def _peer_signing_key() -> SigningKey:
    algorithm, version = PEER_KEY["key_id"].split(":")
    return decode_signing_key_base64(algorithm, version, PEER_KEY["seed_base64"])


def _peer_verify_key() -> VerifyKey:
    algorithm, version = PEER_KEY["key_id"].split(":")
    return decode_verify_key_base64(algorithm, version, PEER_KEY["derived_public_key_base64"])


def _content(case: dict[str, Any]) -> Any:
    return None if case["body_text"] is None else json.loads(case["body_text"])


# --- the signed object and signatures, against gomatrixserverlib's requests ----------


@pytest.mark.parametrize("case", PEER_REQUESTS, ids=lambda case: case["method"])
def test_signing_json_is_the_peer_canonical_text(case: dict[str, Any]) -> None:
    obj = request_signing_json(
        method=case["method"],
        uri=case["uri"],
        origin=case["origin"],
        destination=case["destination"],
        content=_content(case),
    )
    assert encode_canonical_json(obj) == case["signed_json_canonical"].encode("utf-8")


@pytest.mark.parametrize("case", PEER_REQUESTS, ids=lambda case: case["method"])
def test_sign_request_reproduces_peer_signature(case: dict[str, Any]) -> None:
    authorization = sign_request(
        method=case["method"],
        uri=case["uri"],
        origin=case["origin"],
        destination=case["destination"],
        signing_key=_peer_signing_key(),
        content=_content(case),
    )
    assert authorization == XMatrixAuthorization(
        origin=case["origin"],
        destination=case["destination"],
        key=PEER_KEY["key_id"],
        sig=case["expected_sig"],
    )
    # Parameter order differs from the captured header; the parameters do not.
    assert parse_authorization(format_authorization(authorization)) == parse_authorization(
        case["expected_header"]
    )


@pytest.mark.parametrize("case", PEER_REQUESTS, ids=lambda case: case["method"])
def test_peer_header_verifies(case: dict[str, Any]) -> None:
    authorization = parse_authorization(case["expected_header"])
    verify_request(
        authorization,
        method=case["method"],
        uri=case["uri"],
        our_server_name=case["destination"],
        verify_key=_peer_verify_key(),
        content=_content(case),
    )


def _tampered(case: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    base = {
        "method": case["method"],
        "uri": case["uri"],
        "content": _content(case),
    }
    body_changed = {"extra": 1} if base["content"] is None else {**base["content"], "pdus": [1]}
    return [
        ("method", {**base, "method": "POST"}),
        ("uri", {**base, "uri": case["uri"] + "x"}),
        ("query", {**base, "uri": case["uri"] + "&a=b"}),
        ("body", {**base, "content": body_changed}),
    ]


@pytest.mark.parametrize("case", PEER_REQUESTS, ids=lambda case: case["method"])
def test_peer_header_fails_for_any_other_request(case: dict[str, Any]) -> None:
    authorization = parse_authorization(case["expected_header"])
    for what, request in _tampered(case):
        with pytest.raises(InvalidSignatureError, match="does not match this request") as info:
            verify_request(
                authorization,
                our_server_name=case["destination"],
                verify_key=_peer_verify_key(),
                **request,
            )
        assert info.value.http_status == 401, what
        assert info.value.errcode == "M_UNAUTHORIZED", what


def test_request_for_another_destination_is_refused_by_name() -> None:
    case = PEER_REQUESTS[0]
    authorization = parse_authorization(case["expected_header"])
    with pytest.raises(InvalidSignatureError, match="addressed to 'localhost:44033'"):
        verify_request(
            authorization,
            method=case["method"],
            uri=case["uri"],
            our_server_name="elsewhere.example",
            verify_key=_peer_verify_key(),
        )


def test_missing_destination_is_checked_as_ours() -> None:
    # A header without destination still verifies for the server the
    # signature was made for, and fails for any other.
    case = PEER_REQUESTS[0]
    full = parse_authorization(case["expected_header"])
    without = XMatrixAuthorization(origin=full.origin, destination=None, key=full.key, sig=full.sig)
    verify_request(
        without,
        method=case["method"],
        uri=case["uri"],
        our_server_name=case["destination"],
        verify_key=_peer_verify_key(),
    )
    with pytest.raises(InvalidSignatureError, match="does not match this request"):
        verify_request(
            without,
            method=case["method"],
            uri=case["uri"],
            our_server_name="elsewhere.example",
            verify_key=_peer_verify_key(),
        )


def test_wrong_key_and_malformed_signatures_are_named() -> None:
    case = PEER_REQUESTS[0]
    full = parse_authorization(case["expected_header"])
    request = {"method": case["method"], "uri": case["uri"], "our_server_name": case["destination"]}
    other_key = generate_signing_key("other").verify_key
    with pytest.raises(InvalidSignatureError, match="names key 'ed25519:a_Obwu'"):
        verify_request(full, verify_key=other_key, **request)
    cases = [
        ("not!base64", "sig is not unpadded base64"),
        (full.sig[:-4], "sig is 61 bytes, an ed25519 signature is 64"),
    ]
    for sig, message in cases:
        bad = XMatrixAuthorization(
            origin=full.origin, destination=full.destination, key=full.key, sig=sig
        )
        with pytest.raises(InvalidSignatureError, match=message):
            verify_request(bad, verify_key=_peer_verify_key(), **request)


def test_content_that_canonical_json_refuses_cannot_be_signed() -> None:
    with pytest.raises(BadJsonError):
        sign_request(
            method="PUT",
            uri="/x",
            origin="a.example",
            destination="b.example",
            signing_key=generate_signing_key("k"),
            content={"n": 1.5},
        )


# --- the spec's example -------------------------------------------------------------


def test_signing_json_has_the_spec_fields() -> None:
    example = SPEC["spec_example_signed_json"]
    obj = request_signing_json(
        method=example["method"],
        uri=example["uri"],
        origin=example["origin"],
        destination=example["destination"],
        content={"a": 1},
    )
    assert set(obj) == set(example) - {"signatures"}
    assert set(obj) == set(SPEC["signed_json_fields"])
    assert obj["content"] == {"a": 1}
    without_body = request_signing_json(
        method="GET", uri="/target", origin="o.example", destination="d.example"
    )
    assert "content" not in without_body


def test_parse_spec_example_header() -> None:
    example = SPEC["spec_example_signed_json"]
    assert parse_authorization(SPEC["spec_example_header"]) == XMatrixAuthorization(
        origin=example["origin"],
        destination=example["destination"],
        key="ed25519:key1",
        sig="ABCDEF...",
    )


def test_format_follows_the_spec_sender_advice() -> None:
    authorization = XMatrixAuthorization(
        origin="origin.hs.example.com",
        destination="destination.hs.example.com",
        key="ed25519:key1",
        sig="ABCDEF...",
    )
    assert format_authorization(authorization) == SPEC["spec_example_header"]
    no_destination = XMatrixAuthorization(
        origin="o.example", destination=None, key="ed25519:k", sig="s"
    )
    assert (
        format_authorization(no_destination)
        == 'X-Matrix origin="o.example",key="ed25519:k",sig="s"'
    )


# --- parsing --------------------------------------------------------------------------


@pytest.mark.parametrize("header", PEER["parse_cases"]["headers"])
def test_peer_parse_cases(header: str) -> None:
    expected = PEER["parse_cases"]["expected"]
    assert parse_authorization(header) == XMatrixAuthorization(
        origin=expected["origin"],
        destination=expected["destination"],
        key=expected["key"],
        sig=expected["sig"],
    )


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # Scheme and names are case-insensitive; unknown parameters are ignored.
        (
            'x-matrix ORIGIN="a.example",Key="ed25519:1",SIG="s",realm="r"',
            XMatrixAuthorization("a.example", None, "ed25519:1", "s"),
        ),
        # Bare values may hold ':'.
        (
            "X-Matrix origin=a.example:8448,destination=b.example:8448,key=ed25519:1,sig=s",
            XMatrixAuthorization("a.example:8448", "b.example:8448", "ed25519:1", "s"),
        ),
        # Backslash escapes inside quotes are undone.
        (
            r'X-Matrix origin="a.example",key="ed25519:\"x\\y",sig="s"',
            XMatrixAuthorization("a.example", None, 'ed25519:"x\\y', "s"),
        ),
        # Commas inside quotes belong to the value.
        (
            'X-Matrix origin="a.example",key="k,1",sig="s"',
            XMatrixAuthorization("a.example", None, "k,1", "s"),
        ),
        # Trailing and repeated commas are empty list items.
        (
            'X-Matrix ,origin="[::1]:8448",,key="k", sig="s",',
            XMatrixAuthorization("[::1]:8448", None, "k", "s"),
        ),
    ],
)
def test_parse_accepts(header: str, expected: XMatrixAuthorization) -> None:
    assert parse_authorization(header) == expected


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("Bearer abc", "uses scheme 'Bearer', not X-Matrix"),
        ("X-Matrixorigin=a", "uses scheme 'X-Matrixorigin=a', not X-Matrix"),
        ("", "uses scheme '', not X-Matrix"),
        ("X-Matrix", "no parameters after the scheme"),
        ('X-Matrix key="k",sig="s"', "has no origin"),
        ('X-Matrix origin="a.example",sig="s"', "has no key"),
        ('X-Matrix origin="a.example",key="k"', "has no sig"),
        ('X-Matrix origin="a.example",key="",sig="s"', "has an empty key"),
        ('X-Matrix origin="a.example",origin="b.example",key="k",sig="s"', "'origin' appears more"),
        ('X-Matrix origin="a.example",key="k",sig="s', "value of parameter 'sig' is not closed"),
        ('X-Matrix origin="a.example",key,sig="s"', "parameter 'key' has no '=' and value"),
        ('X-Matrix origin="a.example",key=,sig="s"', "parameter 'key' has no value"),
        ('X-Matrix origin="a.example" key="k",sig="s"', "expected ',' after parameter 'origin'"),
        ('X-Matrix origin="a.example",key=k/1,sig="s"', "expected ',' after parameter 'key'"),
        ('X-Matrix origin="a.example",="k",sig="s"', "expected a parameter name"),
        ('X-Matrix origin="a\x01.example",key="k",sig="s"', "control character"),
        ('X-Matrix origin="a_b.example",key="k",sig="s"', "origin is not a server name"),
        ('X-Matrix origin="localhost:http",key="k",sig="s"', "origin is not a server name"),
        (
            'X-Matrix origin="a.example",destination="b.example:99999",key="k",sig="s"',
            "destination is not a server name",
        ),
    ],
)
def test_parse_refuses_naming_the_problem(header: str, message: str) -> None:
    with pytest.raises(InvalidSignatureError) as info:
        parse_authorization(header)
    assert message in info.value.message
    assert info.value.errcode == "M_UNAUTHORIZED"
    assert info.value.http_status == 401


_HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1)


@given(
    origin=st.from_regex(r"[a-z0-9.-]{1,20}(:[1-9][0-9]{0,3})?", fullmatch=True),
    key=_HEADER_TEXT,
    sig=_HEADER_TEXT,
    with_destination=st.booleans(),
)
def test_format_then_parse_round_trips(
    origin: str, key: str, sig: str, with_destination: bool
) -> None:
    authorization = XMatrixAuthorization(
        origin=origin, destination="b.example" if with_destination else None, key=key, sig=sig
    )
    assert parse_authorization(format_authorization(authorization)) == authorization


def test_format_refuses_values_a_header_cannot_carry() -> None:
    with pytest.raises(ValueError, match="cannot send '\\\\n'"):
        format_authorization(XMatrixAuthorization("a.example", None, "k\n", "s"))


# --- server names ---------------------------------------------------------------------


@pytest.mark.parametrize("name", IDENTIFIERS["server_name"]["valid_examples"])
def test_spec_server_names_are_valid(name: str) -> None:
    host, port = split_server_name(name)
    assert name == (host if port is None else f"{host}:{port}")


def test_split_server_name_parts() -> None:
    assert split_server_name("matrix.org") == ("matrix.org", None)
    assert split_server_name("matrix.org:8888") == ("matrix.org", 8888)
    assert split_server_name("[1234:5678::abcd]:5678") == ("[1234:5678::abcd]", 5678)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "must not be empty"),
        (":8448", "has no host"),
        ("a_b.example", "not allowed in a host name: '_'"),
        ("exämple.org", "not allowed in a host name"),
        ("a.example:", "port that is not 1 to 5 digits"),
        ("a.example:123456", "port that is not 1 to 5 digits"),
        ("a.example:0", "port 0, outside 1-65535"),
        ("a.example:70000", "port 70000, outside 1-65535"),
        ("a.example:80:80", "port that is not 1 to 5 digits"),
        ("localhost:http", "port that is not 1 to 5 digits"),
        ("[::1", "never closes"),
        ("[zz::1]", "invalid IPv6 address"),
        ("[1:2:3:4:5:6:7:8:9]", "invalid IPv6 address"),
        ("[::1]x", "after its IPv6 address"),
        ("a" * 256, "longer than 255"),
    ],
)
def test_split_server_name_refuses(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_server_name(name)


# --- the body as received, tried before its canonical form -----------------------------


def _signed_for(content: Any, *, destination: str = "dest.example", uri: str = "/x") -> Any:
    key = generate_signing_key("k1")
    authorization = sign_request(
        method="PUT",
        uri=uri,
        origin="origin.example",
        destination=destination,
        signing_key=key,
        content=content,
    )
    return key.verify_key, authorization


def test_a_canonical_body_as_received_verifies_alone() -> None:
    content = {"b": [1, 2], "a": "x"}
    verify_key, authorization = _signed_for(content)
    # The canonical bytes alone are enough: no parsed content is given.
    verify_request(
        authorization,
        method="PUT",
        uri="/x",
        our_server_name="dest.example",
        verify_key=verify_key,
        raw_content=encode_canonical_json(content),
    )


def test_a_body_in_another_form_falls_back_to_its_canonical_form() -> None:
    content = {"b": [1, 2], "a": "x"}
    verify_key, authorization = _signed_for(content)
    verify_request(
        authorization,
        method="PUT",
        uri="/x",
        our_server_name="dest.example",
        verify_key=verify_key,
        content=content,
        raw_content=b'{ "b": [1, 2],\n  "a": "x" }',
    )


@pytest.mark.parametrize(("destination", "uri"), [("other.example", "/x"), ("dest.example", "/y")])
def test_the_body_as_received_proves_nothing_about_another_request(
    destination: str, uri: str
) -> None:
    content = {"a": "x"}
    verify_key, authorization = _signed_for(content, destination=destination, uri=uri)
    body = encode_canonical_json(content)
    # The bytes another request was signed over, as body: no splice of them
    # makes the signed text of a request to us at /x.
    signed_elsewhere = encode_canonical_json(
        request_signing_json(
            method="PUT", uri=uri, origin="origin.example", destination=destination, content=content
        )
    )
    for raw in (body, signed_elsewhere, signed_elsewhere[len(b'{"content":') :]):
        with pytest.raises(InvalidSignatureError, match="does not match this request"):
            verify_request(
                XMatrixAuthorization(
                    origin=authorization.origin,
                    destination=None,
                    key=authorization.key,
                    sig=authorization.sig,
                ),
                method="PUT",
                uri="/x",
                our_server_name="dest.example",
                verify_key=verify_key,
                content=content,
                raw_content=raw,
            )


def test_is_server_name_says_whether_a_name_follows_the_grammar() -> None:
    assert is_server_name("example.org")
    assert is_server_name("127.0.0.1:8448")
    assert is_server_name("[::1]:8448")
    for bad in ("", "exa mple.org", "a/b", "example.org:99999", "[::zz]"):
        assert not is_server_name(bad)
