"""pytest fixtures for testing against a ranvier homeserver.

Enable it in a test module or a ``conftest.py``::

    pytest_plugins = ["ranvier.testing.pytest_plugin"]

The fixtures are Trio fixtures: they need pytest-trio, with
``trio_mode = true`` in the pytest configuration (or each test marked
``@pytest.mark.trio``).

* ``ranvier_homeserver``: a :class:`~ranvier.testing.homeserver.TestHomeserver`
  running for the test, on the test's ``tmp_path``; see
  :func:`~ranvier.testing.homeserver.open_test_homeserver`.

docs/testing.md has a complete example.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .homeserver import TestHomeserver, open_test_homeserver

__all__ = ["ranvier_homeserver"]


@pytest.fixture
async def ranvier_homeserver(tmp_path: Path) -> AsyncIterator[TestHomeserver]:
    """A homeserver named ``localhost`` serving the client API on loopback."""
    async with open_test_homeserver(tmp_path / "ranvier") as homeserver:
        yield homeserver
