import os
import stat
import threading
from pathlib import Path

import pytest
import signedjson.key

from ranvier.keyfile import KeyFileError, load_or_create_signing_key
from ranvier.protocol.signing import (
    encode_signing_key_base64,
    generate_signing_key,
    key_id,
    read_signing_keys,
    write_signing_keys,
)


def test_a_missing_file_is_created_with_a_new_key(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "signing.key"
    key = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (stored,) = read_signing_keys(path.read_text("ascii"))
    assert stored.encode() == key.encode()
    assert key_id(stored) == key_id(key)
    # Synapse's reader understands the file.
    with path.open() as file:
        (theirs,) = signedjson.key.read_signing_keys(file)
    assert theirs.encode() == key.encode()


def test_the_created_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        load_or_create_signing_key(tmp_path / "signing.key")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "signing.key").stat().st_mode) == 0o600


def test_an_existing_file_is_read_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    first = generate_signing_key("first")
    second = generate_signing_key("second")
    path.write_text("\n" + write_signing_keys([first, second]))
    before = path.read_bytes()
    key = load_or_create_signing_key(str(path))
    assert key_id(key) == "ed25519:first"
    assert key.encode() == first.encode()
    assert path.read_bytes() == before


def test_a_second_load_gives_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    created = load_or_create_signing_key(path)
    again = load_or_create_signing_key(path)
    assert again.encode() == created.encode()
    assert key_id(again) == key_id(created)


def test_concurrent_first_starts_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    barrier = threading.Barrier(8)
    seeds: list[bytes] = []

    def load() -> None:
        barrier.wait()
        seeds.append(load_or_create_signing_key(path).encode())

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (stored,) = read_signing_keys(path.read_text("ascii"))
    assert seeds == [stored.encode()] * 8


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("ed25519 a_1\n", 1, "expected 3 fields"),
        ("\n\ned25519 a_1 AAAA\n", 3, "an ed25519 seed is 32 bytes"),
        ("rsa a_1 AAAA\n", 1, "unsupported signing key algorithm 'rsa'"),
        ("ed25519 a-1 " + "A" * 43 + "\n", 1, "a key version must be"),
    ],
)
def test_a_malformed_file_names_path_and_line(
    tmp_path: Path, text: str, line: int, problem: str
) -> None:
    path = tmp_path / "signing.key"
    path.write_text(text)
    with pytest.raises(KeyFileError) as caught:
        load_or_create_signing_key(path)
    assert caught.value.path == path
    assert caught.value.line == line
    assert str(caught.value).startswith(f"signing key file {path}, line {line}: ")
    assert problem in str(caught.value)
    assert path.read_text() == text


def test_the_error_never_shows_the_seed(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    good = generate_signing_key("good")
    seed = encode_signing_key_base64(good)
    # A valid first line, then a second key with the same version and an
    # extra field: neither seed may appear in the message.
    path.write_text(f"ed25519 good {seed}\ned25519 good {seed} extra\n")
    with pytest.raises(KeyFileError) as caught:
        load_or_create_signing_key(path)
    assert caught.value.line == 2
    assert seed not in str(caught.value)
    assert seed[:8] not in repr(caught.value)


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    path.write_text("\n  \n")
    with pytest.raises(KeyFileError, match="holds no key") as caught:
        load_or_create_signing_key(path)
    assert caught.value.line is None
    assert str(path) in str(caught.value)
    assert path.read_text() == "\n  \n"


def test_a_binary_file_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    path.write_bytes(b"ed25519 a AAAA\n\xff\xfe\n")
    with pytest.raises(KeyFileError, match="not ASCII text") as caught:
        load_or_create_signing_key(path)
    assert caught.value.line == 2


def test_a_directory_in_the_way_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    path.mkdir()
    with pytest.raises(KeyFileError, match="cannot read it") as caught:
        load_or_create_signing_key(path)
    assert caught.value.path == path


def test_an_unwritable_directory_is_an_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # Root writes anywhere; a file where a directory should be stops
        # everyone.
        (tmp_path / "blocked").write_text("")
        path = tmp_path / "blocked" / "signing.key"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        path = locked / "signing.key"
    with pytest.raises(KeyFileError) as caught:
        load_or_create_signing_key(path)
    assert caught.value.path == path
    assert not path.exists()
