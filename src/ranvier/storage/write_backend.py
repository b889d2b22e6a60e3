"""Where storage's writes go, and which writes may travel to another process.

Every write in ranvier is an operation of the write connection handed to a
:class:`WriteBackend`. On the main process that is the
:class:`~ranvier.storage.actor.StorageActor`; on a worker it is a client of
the main process's actor (:mod:`ranvier.replication`), and storage's own
classes cannot tell which they were given: they only ``submit``.

A write that may cross a process boundary must be describable as data: a
registered function of the connection with plain keyword arguments (msgspec
Structs, dataclasses, strings, numbers, bytes and containers of them), made
into an operation with :func:`functools.partial`; or an instance of a
registered class that is itself the operation (:class:`~ranvier.storage.writes.PersistEvents`).
:func:`registered_write` puts a function or class on that list under a
stable name, and the main process runs nothing else it is sent: a closure
or a lambda has no name there, so a worker refuses to send it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol, TypeVar

import trio

from .actor import WriteOperation

__all__ = ["WriteBackend", "registered_write", "registered_writes"]

T = TypeVar("T")
_F = TypeVar("_F", bound=Callable[..., object])

_REGISTRY: Final[dict[str, Callable[..., object]]] = {}


class WriteBackend(Protocol):
    """Runs write operations: the storage actor, or a client of another
    process's actor.

    ``submit`` returns the operation's result or raises what it raised,
    once the write is committed; ``run`` is the backend's life, started
    with ``await nursery.start(backend.run)`` and ready when that returns.
    """

    async def submit(self, operation: WriteOperation[T]) -> T: ...

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None: ...


def registered_write(function: _F) -> _F:
    """Name a write so that it may be sent to another process's actor.

    The name is the defining module's last part and the function's name
    without a leading underscore (``writes.store_room``,
    ``accounts.create_account``); two writes of one name are a bug found at
    import.
    """
    module = function.__module__.rpartition(".")[2]
    name = f"{module}.{function.__name__.lstrip('_')}"
    if name in _REGISTRY and _REGISTRY[name] is not function:
        raise RuntimeError(f"two write operations are named {name}")
    _REGISTRY[name] = function
    return function


def registered_writes() -> dict[str, Callable[..., object]]:
    """Every registered write by name (those of modules imported so far)."""
    return dict(_REGISTRY)
