"""The homeserver's handlers, on Trio: event contexts, authorization at the
three points the spec names, and state resolution with storage behind it.

core talks to storage (or a worker's replication client) only through the
small protocols of :mod:`ranvier.core.interfaces`.
"""

from .interfaces import EventPersister, StateReader
from .state import resolve_state_maps

__all__ = ["EventPersister", "StateReader", "resolve_state_maps"]
