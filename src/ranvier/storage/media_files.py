"""Media files on disk: where each lives, and writing one so that a crash
never leaves a half file under a real name.

Layout under the store's root: ``local/<media_id>`` for media uploaded
here, ``remote/<origin>/<media_id>`` for other servers' media,
``thumbnails/<origin>/<media_id>/<width>x<height>-<method>`` for
thumbnails. Media IDs and server names are checked by the callers (the
spec's character sets leave no ``/`` or ``..`` in them); the paths are
checked again here, as the one place that turns them into file names.

A file is written to a temporary name in its final directory, synced, and
then linked or renamed to its name, and the directory synced: the name
appears with the whole file or not at all. Every system call runs in a
worker thread, off the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Final

import trio

__all__ = ["MediaFileExistsError", "MediaFiles"]

#: How much of a file is read at a time when it is served.
_READ_CHUNK: Final = 256 * 1024


class MediaFileExistsError(FileExistsError):
    """A file was to be written under a name that is taken."""


class MediaFiles:
    """The media store rooted at ``root`` (created on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def local(self, media_id: str) -> Path:
        return self._inside("local", media_id)

    def remote(self, origin: str, media_id: str) -> Path:
        return self._inside("remote", origin, media_id)

    def thumbnail(self, origin: str, media_id: str, width: int, height: int, method: str) -> Path:
        return self._inside("thumbnails", origin, media_id, f"{width}x{height}-{method}")

    def _inside(self, *parts: str) -> Path:
        for part in parts:
            if not part or part in (".", "..") or "/" in part or "\0" in part:
                raise ValueError(f"{part!r} cannot name a file in the media store")
        return self.root.joinpath(*parts)

    async def write(
        self, path: Path, chunks: AsyncIterable[bytes], *, replace: bool = False
    ) -> int:
        """Write ``chunks`` to ``path``; return the size written.

        Without ``replace``, a file already at ``path`` is kept and
        :class:`MediaFileExistsError` raised. Whatever ``chunks`` raises
        comes out after the temporary file is removed.
        """
        await trio.to_thread.run_sync(lambda: path.parent.mkdir(parents=True, exist_ok=True))
        temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}.part"
        size = 0
        try:
            async with await trio.open_file(temporary, "xb") as file:
                async for chunk in chunks:
                    await file.write(chunk)
                    size += len(chunk)
                await file.flush()
                await trio.to_thread.run_sync(os.fsync, file.fileno())
            await trio.to_thread.run_sync(_publish, temporary, path, replace)
        finally:
            with contextlib.suppress(FileNotFoundError):
                await trio.to_thread.run_sync(temporary.unlink)
        return size

    async def write_bytes(self, path: Path, data: bytes, *, replace: bool = False) -> int:
        """:meth:`write` for bytes already in memory."""

        async def once() -> AsyncIterator[bytes]:
            yield data

        return await self.write(path, once(), replace=replace)

    async def size(self, path: Path) -> int | None:
        """The file's size, or None when there is no such file."""
        try:
            stat = await trio.Path(path).stat()
        except FileNotFoundError:
            return None
        return stat.st_size

    async def remove(self, path: Path) -> None:
        """Remove the file at ``path``; one already gone is no error."""
        await trio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))

    async def remove_thumbnails(self, origin: str, media_id: str) -> None:
        """Remove every thumbnail of the media, and their directory."""
        directory = self._inside("thumbnails", origin, media_id)
        await trio.to_thread.run_sync(_remove_tree, directory)

    async def read_bytes(self, path: Path) -> bytes:
        return await trio.Path(path).read_bytes()

    async def chunks(self, path: Path) -> AsyncGenerator[bytes, None]:
        """The file's bytes, a bounded piece at a time."""
        async with await trio.open_file(path, "rb") as file:
            while chunk := await file.read(_READ_CHUNK):
                yield chunk


def _remove_tree(directory: Path) -> None:
    # Thumbnails are files in one directory: no deeper tree to walk.
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        entry.unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError as exc:
        # A thumbnail made meanwhile stays, a file nobody names.
        if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
            raise


def _publish(temporary: Path, path: Path, replace: bool) -> None:
    if replace:
        os.replace(temporary, path)
    else:
        try:
            # A hard link fails where a rename would overwrite.
            os.link(temporary, path)
        except FileExistsError:
            raise MediaFileExistsError(f"{path} exists") from None
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
