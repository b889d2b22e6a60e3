"""Outgoing federation: a queue per destination, transactions of up to 50
PDUs and 100 EDUs, backoff kept in the database, and catching a destination
up on what it missed."""

from .backoff import BackoffPolicy, is_destination_failure
from .interfaces import EduOutbox, PduOutbox, SenderStore, TransactionClient
from .queue import DestinationStatus
from .sender import FederationSender

__all__ = [
    "BackoffPolicy",
    "DestinationStatus",
    "EduOutbox",
    "FederationSender",
    "PduOutbox",
    "SenderStore",
    "TransactionClient",
    "is_destination_failure",
]
