from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _races import ProbedStorage, RaceRoom, Turnstile

from ranvier.storage import Storage


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ranvier.db"


@pytest.fixture
async def storage(db_path: Path, nursery: trio.Nursery) -> Storage:
    # Durability is not under test here; NORMAL spares a sync per commit.
    store = Storage(db_path, synchronous="NORMAL")
    await nursery.start(store.run)
    return store


# The race tests' pieces (tests/core/_races.py).


@pytest.fixture
async def race(storage: Storage) -> RaceRoom:
    """Bob's room, which Alice of ours joined here with partial state."""
    room = RaceRoom()
    await room.join_partially(storage)
    return room


@pytest.fixture
def turnstile() -> Turnstile:
    return Turnstile()


@pytest.fixture
def probed(storage: Storage, turnstile: Turnstile) -> ProbedStorage:
    """``storage``, with its hook points passing ``turnstile``."""
    return ProbedStorage(storage, turnstile)
