"""The names other projects build on stay importable, and the README's example runs."""

from pathlib import Path

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


def test_readme_embedding_example_runs_as_written(capsys):
    """The README's example is executed as it stands, so it cannot rot."""
    readme = (Path(__file__).parents[2] / "README.md").read_text("utf-8")
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.split()
    assert printed[0].startswith("$")
    assert len(printed[0]) == 44
    assert printed[1:] == ["m.room.message", "hello"]
