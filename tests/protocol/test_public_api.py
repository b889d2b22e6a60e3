"""The names other projects build on stay importable."""

import ranvier.protocol as protocol

ISSUE_NAMED = [
    "encode_canonical_json",
    "sign_json",
    "verify_signed_json",
    "compute_content_hash",
    "compute_event_id",
    "compute_room_id",
    "redact",
]


def test_issue_named_functions_are_exported():
    for name in ISSUE_NAMED:
        assert callable(getattr(protocol, name)), name
        assert name in protocol.__all__


def test_all_is_accurate():
    for name in protocol.__all__:
        assert hasattr(protocol, name), name


def test_sign_and_verify_through_the_package():
    key = protocol.generate_signing_key("a_1")
    signed = protocol.sign_json({"server_name": "example.org"}, "example.org", key)
    protocol.verify_signed_json(signed, "example.org", key.verify_key)
    assert protocol.encode_canonical_json(signed).startswith(b'{"server_name":"example.org"')
