"""Creating the server's own files (keys, certificates) without ever
replacing one: a key that other servers already trust must not be lost to a
second start racing the first, or to a half-written file."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["create_new_file"]


def create_new_file(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to a new file at ``path`` with exactly ``mode``.

    Missing parent directories are created. Raises FileExistsError if the
    file exists, even if it appeared a moment ago (``O_EXCL``). A failed
    write removes the partial file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        # The mode given to os.open is reduced by the umask; set it outright.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
