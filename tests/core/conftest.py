from __future__ import annotations

from pathlib import Path

import pytest
import trio

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
