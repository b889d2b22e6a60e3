"""Storage writing through a backend it is given, and the names of writes."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from ranvier.storage import Storage, StorageActor, WriteOperation
from ranvier.storage.write_backend import WriteBackend, registered_write, registered_writes

T = TypeVar("T")


class _CountingBackend:
    """A real storage actor that counts what passes through it."""

    def __init__(self, actor: StorageActor) -> None:
        self.actor = actor
        self.submitted: list[WriteOperation[Any]] = []

    async def submit(self, operation: WriteOperation[T]) -> T:
        self.submitted.append(operation)
        return await self.actor.submit(operation)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.actor.run(task_status=task_status)


async def test_every_storage_class_writes_through_the_backend_given(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    backend = _CountingBackend(StorageActor(path))
    writer: WriteBackend = backend
    storage = Storage(path, writer=writer)
    async with trio.open_nursery() as nursery:
        await nursery.start(storage.run)
        await storage.store_room("!r:x", "10")
        assert await storage.aliases.create_alias("#a:x", "!r:x", "@u:x", 1)
        await storage.client_transactions.add_client_transaction(
            "@u:x", "D", b"", "t", room_id="!r:x", event_id="$e", created_ts=1
        )
        assert await storage.sync.store_filter("@u:x", b"{}") == 0
        nursery.cancel_scope.cancel()
    assert len(backend.submitted) == 4
    assert storage.writer is backend
    with pytest.raises(RuntimeError, match="another process"):
        storage.actor  # noqa: B018


async def test_default_writer_is_the_storage_actor(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "db.sqlite")
    assert isinstance(storage.writer, StorageActor)
    assert storage.actor is storage.writer


def test_registered_names_come_from_module_and_function() -> None:
    names = registered_writes()
    assert "writes.store_room" in names
    assert "accounts.create_account" in names


def test_two_writes_of_one_name_are_refused() -> None:
    def _twin(conn: sqlite3.Connection) -> None:
        pass

    _twin.__module__ = "ranvier.storage.writes"
    _twin.__name__ = "store_room"
    with pytest.raises(RuntimeError, match=r"writes\.store_room"):
        registered_write(_twin)
