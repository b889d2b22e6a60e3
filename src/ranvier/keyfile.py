"""The server's own signing key, kept in a file in Synapse's format.

Other servers trust events and requests signed with this key for as long as
they cache it, so the file is treated with care: created readable by its
owner only, never overwritten (a second start racing the first reads the
key the first one wrote, never a half-written file), and never quoted in an
error message, since a line of it is the secret seed.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Final

from ranvier.protocol.signing import (
    SigningKey,
    SigningKeyFileError,
    generate_key_version,
    generate_signing_key,
    key_id,
    read_signing_keys,
    write_signing_keys,
)

__all__ = ["KeyFileError", "load_or_create_signing_key"]

_log: Final = logging.getLogger(__name__)


class KeyFileError(ValueError):
    """A signing-key file that cannot be used.

    ``path`` is the file, ``line`` the 1-based line at fault when the
    problem is one line's (None otherwise). Like the protocol layer's
    :class:`~ranvier.protocol.signing.SigningKeyFileError`, it is for the
    operator and never repeats the file's contents.
    """

    def __init__(self, path: Path, problem: str, *, line: int | None = None) -> None:
        where = str(path) if line is None else f"{path}, line {line}"
        super().__init__(f"signing key file {where}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


def load_or_create_signing_key(path: str | Path) -> SigningKey:
    """The first key in the key file at ``path``, creating the file if missing.

    A missing file (and its missing parent directories) is created with a
    new key, mode 0600. An existing file is only read: several keys may be
    listed, and the first is the one the server signs with, as in Synapse.
    Raises :class:`KeyFileError` for a file that cannot be read or holds
    no valid key.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        key = generate_signing_key(generate_key_version())
        try:
            _create_complete_file(path, write_signing_keys([key]).encode("ascii"))
        except FileExistsError:
            # Another process created it between our read and our write:
            # its key is the one that counts.
            return _read_first_key(path)
        except OSError as exc:
            raise KeyFileError(path, f"cannot create it: {exc.strerror}") from None
        _log.info("generated signing key %s in %s", key_id(key), path)
        return key
    except OSError as exc:
        raise KeyFileError(path, f"cannot read it: {exc.strerror}") from None
    return _parse_first_key(path, data)


def _create_complete_file(path: Path, data: bytes) -> None:
    # The key is written to a private temporary file that is then linked
    # into place: link() fails if the name exists, like O_EXCL, and unlike
    # creating the file and then writing it, nobody can read it empty.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600 whatever the umask.
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)
    finally:
        os.unlink(temporary)


def _read_first_key(path: Path) -> SigningKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(path, f"cannot read it: {exc.strerror}") from None
    return _parse_first_key(path, data)


def _parse_first_key(path: Path, data: bytes) -> SigningKey:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise KeyFileError(path, "not ASCII text", line=line) from None
    try:
        keys = read_signing_keys(text)
    except SigningKeyFileError as exc:
        raise KeyFileError(path, exc.problem, line=exc.line) from None
    if not keys:
        raise KeyFileError(path, "holds no key (expected 'ed25519 <version> <base64 seed>')")
    return keys[0]
