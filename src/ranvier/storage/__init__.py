"""Storage: the schema, the storage actor that alone writes, and the reads.

Start a :class:`Storage` with ``await nursery.start(storage.run)``, then call
its async methods from any task. See :mod:`ranvier.storage.actor` for the
rules the actor keeps and :mod:`ranvier.storage.writes` for how current state
and forward extremities follow the events written.
"""

from .actor import (
    CombinableWrite,
    StorageActor,
    WriteOperation,
    WriteStats,
    is_fatal_database_error,
)
from .connections import SynchronousMode
from .readers import ReaderPool, ReadOperation
from .records import (
    DestinationRetry,
    EventStateContext,
    EventStateGroups,
    EventToPersist,
    PartialStateRoom,
    ReceivedTransaction,
    ServerKey,
    StateDelta,
    StateKey,
    StateMap,
    StoredEvent,
)
from .schema import SCHEMA_VERSION
from .state_groups import MAX_CHAIN_LENGTH
from .store import Storage

__all__ = [
    "MAX_CHAIN_LENGTH",
    "SCHEMA_VERSION",
    "CombinableWrite",
    "DestinationRetry",
    "EventStateContext",
    "EventStateGroups",
    "EventToPersist",
    "PartialStateRoom",
    "ReadOperation",
    "ReaderPool",
    "ReceivedTransaction",
    "ServerKey",
    "StateDelta",
    "StateKey",
    "StateMap",
    "Storage",
    "StorageActor",
    "StoredEvent",
    "SynchronousMode",
    "WriteOperation",
    "WriteStats",
    "is_fatal_database_error",
]
