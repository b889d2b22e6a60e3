"""Deleting media: its file, its thumbnails and its rows, in the order that
keeps a crash harmless.

Invariants
----------

* **Rows are marked, then files go, then rows go.** A marked row is served
  as gone and its remote media is not fetched again while it is there, so
  no request sees a row whose file is missing as found, and no fetch writes
  a new file that the deletion then removes. A crash after the mark leaves
  marked rows: :meth:`MediaDeleter.finish_pending` (run by each retention
  pass) removes their files, already gone or not, and their rows.
* **A file already missing is no failure**: the deletion goes on to the
  rows, so nothing stays half deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final, Protocol

from ranvier.storage.media_admin import DeletionRule, MediaKey

__all__ = ["DeletionStore", "MediaDeleter", "MediaFileRemover"]

# How many pieces of media one write marks or removes.
_BATCH: Final = 200
# How many pieces of media one read chooses for a deletion by a rule.
_CHOSEN: Final = 500


class DeletionStore(Protocol):
    """:class:`ranvier.storage.media_admin.MediaAdminStorage`."""

    async def mark_for_deletion(
        self, items: Sequence[MediaKey], rule: DeletionRule | None
    ) -> list[MediaKey]: ...

    async def remove_marked(self, items: Sequence[MediaKey], *, server_name: str) -> None: ...

    async def pending_deletions(self, limit: int) -> list[MediaKey]: ...

    async def deletion_candidates(
        self, server_name: str, *, local: bool, rule: DeletionRule, keep_profiles: bool, limit: int
    ) -> list[MediaKey]: ...


class MediaFileRemover(Protocol):
    """:class:`ranvier.storage.media_files.MediaFiles`."""

    def local(self, media_id: str) -> Path: ...

    def remote(self, origin: str, media_id: str) -> Path: ...

    async def remove(self, path: Path) -> None: ...

    async def remove_thumbnails(self, origin: str, media_id: str) -> None: ...


class MediaDeleter:
    """Deletes media of ``server_name`` and other servers' media kept here."""

    def __init__(self, *, server_name: str, store: DeletionStore, files: MediaFileRemover) -> None:
        self._server_name = server_name
        self._store = store
        self._files = files

    async def delete(
        self, items: Sequence[MediaKey], rule: DeletionRule | None = None
    ) -> list[MediaKey]:
        """Delete those of ``items`` that ``rule`` allows (all without one)
        and that exist; answer those deleted."""
        deleted: list[MediaKey] = []
        unique = list(dict.fromkeys(items))
        for start in range(0, len(unique), _BATCH):
            marked = await self._store.mark_for_deletion(unique[start : start + _BATCH], rule)
            await self._remove(marked)
            deleted.extend(marked)
        return deleted

    async def delete_unused(
        self, *, local: bool, rule: DeletionRule, keep_profiles: bool
    ) -> list[MediaKey]:
        """Delete our media (``local``) or other servers' kept here that
        ``rule`` allows; ``keep_profiles`` spares what profiles and room
        avatars show. Answer what was deleted."""
        deleted: list[MediaKey] = []
        while True:
            chosen = await self._store.deletion_candidates(
                self._server_name,
                local=local,
                rule=rule,
                keep_profiles=keep_profiles,
                limit=_CHOSEN,
            )
            gone = await self.delete(chosen, rule)
            deleted.extend(gone)
            # Media used since it was chosen is kept and not chosen again;
            # a batch of which nothing went would be chosen again: stop.
            if len(chosen) < _CHOSEN or not gone:
                return deleted

    async def finish_pending(self) -> int:
        """Finish deletions a crash or a cancellation interrupted; how many."""
        finished = 0
        while marked := await self._store.pending_deletions(_BATCH):
            await self._remove(marked)
            finished += len(marked)
        return finished

    async def _remove(self, marked: Sequence[MediaKey]) -> None:
        for origin, media_id in marked:
            if origin == self._server_name:
                path = self._files.local(media_id)
            else:
                path = self._files.remote(origin, media_id)
            await self._files.remove(path)
            await self._files.remove_thumbnails(origin, media_id)
        if marked:
            await self._store.remove_marked(marked, server_name=self._server_name)
