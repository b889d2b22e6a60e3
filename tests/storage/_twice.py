"""A registered write run twice through the replication encoding, as a
worker's write repeated after the main process restarted: the second run
must leave the tables and the answer as the first did."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ranvier.replication import operations
from ranvier.storage import Storage, WriteOperation


def write_call(function: Any, **arguments: Any) -> WriteOperation[Any]:
    """``function`` with its keyword arguments, as storage modules submit it."""
    return functools.partial(function, **arguments)


def dump_tables(path: Path, tables: Sequence[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of ``tables``, in an order that does not depend on storage."""
    conn = sqlite3.connect(path)
    try:
        return {
            table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
            for table in tables
        }
    finally:
        conn.close()


async def run_twice(
    storage: Storage, db_path: Path, operation: WriteOperation[Any], tables: Sequence[str]
) -> Any:
    """Run ``operation`` (as received from another process) twice; assert the
    first run changed ``tables`` and the second changed nothing and answered
    the same. Returns the answer.
    """
    sent_name, body = operations.encode_operation(operation)
    received = operations.decode_operation(sent_name, body)
    before = dump_tables(db_path, tables)
    first = await storage.actor.submit(received)
    once = dump_tables(db_path, tables)
    assert once != before
    second = await storage.actor.submit(received)
    assert (dump_tables(db_path, tables), second) == (once, first)
    return first
