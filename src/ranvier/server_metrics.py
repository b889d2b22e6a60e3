"""Every metric a homeserver process exposes, registered in one place.

Each process (the main one, each worker) serves its own ``/metrics`` and
is scraped as a target of its own: the samples carry no process label, as
Prometheus' ``instance`` label tells the processes apart. A worker counts
what it does itself (the requests it answers, the transactions it handles
or sends); writes it makes through the main process are counted there, in
the storage actor's metrics, and its own storage metrics are its reads.

Everything here is read when a scrape comes: the components keep plain
counts, and only the registered users and rooms come from the database, by
one read each on the reader pool.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from ranvier.federation.server import KNOWN_EDU_TYPES, PDU_OUTCOMES
from ranvier.http_metrics import HTTP_FAMILIES, HttpMetrics
from ranvier.metrics import FAMILIES, MetricFamily, MetricsRegistry, sample_name
from ranvier.process_metrics import PROCESS_FAMILIES, process_samples
from ranvier.storage.actor import StorageActor

if TYPE_CHECKING:
    from ranvier.core.sliding_sync import SlidingSyncHandler
    from ranvier.core.sync import SyncHandler
    from ranvier.server import HomeServer

__all__ = [
    "CLIENT_FAMILIES",
    "EVENT_FAMILIES",
    "FEDERATION_IN_FAMILIES",
    "FEDERATION_OUT_FAMILIES",
    "SIGNATURE_FAMILIES",
    "STORAGE_FAMILIES",
    "homeserver_metrics",
]

Samples = dict[str, int | float]

FEDERATION_IN_FAMILIES: Final = (
    MetricFamily(
        "ranvier_federation_transactions_received_total",
        "counter",
        "Transactions from other servers handled (a repeat answered from the record is not).",
    ),
    MetricFamily(
        "ranvier_federation_pdus_received_total",
        "counter",
        "PDUs of those transactions, by outcome: accepted, rejected, soft_failed,"
        " already_known or dropped.",
    ),
    MetricFamily(
        "ranvier_federation_edus_received_total",
        "counter",
        "EDUs of those transactions, by type; types the spec does not define count as other.",
    ),
    MetricFamily(
        "ranvier_federation_requests_delayed_total",
        "counter",
        "Requests from other servers held because their server was over its window's limit.",
    ),
    MetricFamily(
        "ranvier_federation_requests_queued_total",
        "counter",
        "Requests from other servers that waited for one of their server's concurrent slots.",
    ),
    MetricFamily(
        "ranvier_federation_requests_rejected_total",
        "counter",
        "Requests from other servers refused with 429: too many of their server's were waiting.",
    ),
)

FEDERATION_OUT_FAMILIES: Final = (
    MetricFamily(
        "ranvier_federation_destinations_backing_off",
        "gauge",
        "Destinations with a queue now that are waiting to be tried again after failures.",
    ),
    MetricFamily(
        "ranvier_federation_transactions_sent_total",
        "counter",
        "Transactions other servers took.",
    ),
    MetricFamily(
        "ranvier_federation_transactions_failed_total",
        "counter",
        "Attempts to send a transaction that failed; the destination then backs off.",
    ),
    MetricFamily(
        "ranvier_federation_transactions_dropped_total",
        "counter",
        "Transactions given up on because the destination would never take them.",
    ),
    MetricFamily("ranvier_federation_pdus_sent_total", "counter", "PDUs in the transactions sent."),
    MetricFamily("ranvier_federation_edus_sent_total", "counter", "EDUs in the transactions sent."),
    MetricFamily(
        "ranvier_federation_catch_ups_started_total",
        "counter",
        "Times a destination's queue turned to catching up from the database.",
    ),
)

STORAGE_FAMILIES: Final = (
    MetricFamily(
        "ranvier_storage_writes_committed_total",
        "counter",
        "Write requests the storage actor committed.",
    ),
    MetricFamily(
        "ranvier_storage_writes_failed_total",
        "counter",
        "Write requests that failed and were rolled back alone.",
    ),
    MetricFamily(
        "ranvier_storage_write_batch_size",
        "histogram",
        "Write requests committed together in one transaction.",
    ),
    MetricFamily(
        "ranvier_storage_write_batch_duration_seconds",
        "histogram",
        "Time a batch of writes took in the writer thread, its commit included.",
    ),
    MetricFamily(
        "ranvier_storage_write_queue_depth",
        "gauge",
        "Write requests waiting for the storage actor.",
    ),
    MetricFamily("ranvier_storage_reads_total", "counter", "Reads run on the reader pool."),
)

EVENT_FAMILIES: Final = (
    MetricFamily(
        "ranvier_events_persisted_total",
        "counter",
        "Events written, by origin: local (sent by this server's users), federation"
        " (by others') or backfill.",
    ),
    MetricFamily(
        "ranvier_partial_state_conflicts_total",
        "counter",
        "Writes of events refused because their room's partial state was cleared"
        " meanwhile; each is checked again and retried.",
    ),
    MetricFamily(
        "ranvier_partial_state_conflicts_refused_total",
        "counter",
        "Client events answered with 429 after a second partial-state conflict.",
    ),
)

SIGNATURE_FAMILIES: Final = (
    MetricFamily(
        "ranvier_signature_process_up",
        "gauge",
        "1 while the process checking big batches of signatures runs (it starts at the"
        " first batch and ends when idle), else 0.",
    ),
    MetricFamily(
        "ranvier_signature_process_starts_total",
        "counter",
        "Times the signature process was started.",
    ),
    MetricFamily(
        "ranvier_signature_process_signatures_checked_total",
        "counter",
        "Signatures the signature process checked; batches it could not take were"
        " checked in threads instead.",
    ),
)

CLIENT_FAMILIES: Final = (
    MetricFamily(
        "ranvier_sync_long_polls",
        "gauge",
        "Client /sync requests waiting now for something new.",
    ),
    MetricFamily(
        "ranvier_sliding_sync_long_polls",
        "gauge",
        "Client sliding sync requests waiting now for something new.",
    ),
    MetricFamily(
        "ranvier_registered_users",
        "gauge",
        "Accounts on this server that are not deactivated.",
    ),
    MetricFamily("ranvier_rooms", "gauge", "Rooms this server knows of."),
)


def homeserver_metrics(
    hs: HomeServer,
    http: HttpMetrics,
    sync: Callable[[], SyncHandler | None],
    sliding_sync: Callable[[], SlidingSyncHandler | None] = lambda: None,
) -> MetricsRegistry:
    """The registry of ``hs``'s ``metrics`` listener; ``http`` counts its
    other listeners' requests, ``sync`` and ``sliding_sync`` give its
    handlers of the two (None before the client routes are made).
    """
    registry = MetricsRegistry()
    registry.add(PROCESS_FAMILIES, process_samples)
    registry.add(FAMILIES, hs.metrics)
    registry.add(HTTP_FAMILIES, http.samples)
    registry.add(FEDERATION_IN_FAMILIES, lambda: _federation_in(hs))
    registry.add(FEDERATION_OUT_FAMILIES, lambda: _federation_out(hs))
    registry.add(STORAGE_FAMILIES, lambda: _storage(hs))
    registry.add(EVENT_FAMILIES, lambda: _events(hs))
    registry.add(SIGNATURE_FAMILIES, lambda: _signature_process(hs))

    async def clients() -> Samples:
        handler, sliding = sync(), sliding_sync()
        users, rooms = await hs.storage.readers.read(_count_users_and_rooms)
        return {
            "ranvier_sync_long_polls": 0 if handler is None else handler.long_polls,
            "ranvier_sliding_sync_long_polls": 0 if sliding is None else sliding.long_polls,
            "ranvier_registered_users": users,
            "ranvier_rooms": rooms,
        }

    registry.add(CLIENT_FAMILIES, clients)
    return registry


def _federation_in(hs: HomeServer) -> Samples:
    handler = hs.transaction_handler
    samples: Samples = {
        "ranvier_federation_transactions_received_total": handler.transactions_handled
    }
    for outcome in PDU_OUTCOMES:
        name = sample_name("ranvier_federation_pdus_received_total", outcome=outcome)
        samples[name] = handler.pdu_outcomes[outcome]
    for edu_type in (*sorted(KNOWN_EDU_TYPES), "other"):
        name = sample_name("ranvier_federation_edus_received_total", edu_type=edu_type)
        samples[name] = handler.edus_received[edu_type]
    limiter = hs.federation_app.rate_limiter
    samples["ranvier_federation_requests_delayed_total"] = limiter.delayed if limiter else 0
    samples["ranvier_federation_requests_queued_total"] = limiter.queued if limiter else 0
    samples["ranvier_federation_requests_rejected_total"] = limiter.rejected if limiter else 0
    return samples


def _federation_out(hs: HomeServer) -> Samples:
    sender = hs.federation_sender
    totals = sender.totals
    return {
        "ranvier_federation_destinations_backing_off": sender.destinations_backing_off,
        "ranvier_federation_transactions_sent_total": totals.transactions_sent,
        "ranvier_federation_transactions_failed_total": totals.transactions_failed,
        "ranvier_federation_transactions_dropped_total": totals.transactions_dropped,
        "ranvier_federation_pdus_sent_total": totals.pdus_sent,
        "ranvier_federation_edus_sent_total": totals.edus_sent,
        "ranvier_federation_catch_ups_started_total": totals.catch_ups_started,
    }


def _storage(hs: HomeServer) -> Samples:
    storage = hs.storage
    samples: Samples = {"ranvier_storage_reads_total": storage.readers.reads}
    actor = storage.writer
    if isinstance(actor, StorageActor):
        # A worker writes through the main process: these are counted there.
        samples["ranvier_storage_writes_committed_total"] = actor.writes_committed
        samples["ranvier_storage_writes_failed_total"] = actor.writes_failed
        samples.update(actor.batch_sizes.samples("ranvier_storage_write_batch_size"))
        samples.update(actor.batch_seconds.samples("ranvier_storage_write_batch_duration_seconds"))
        samples["ranvier_storage_write_queue_depth"] = actor.queue_depth
    return samples


def _events(hs: HomeServer) -> Samples:
    storage = hs.storage
    samples: Samples = {}
    for origin, count in (
        *storage.events_persisted.items(),
        ("backfill", storage.backfill.events_persisted),
    ):
        samples[sample_name("ranvier_events_persisted_total", origin=origin)] = count
    samples["ranvier_partial_state_conflicts_total"] = storage.partial_state_conflicts
    samples["ranvier_partial_state_conflicts_refused_total"] = hs.event_creator.conflicts_refused
    return samples


def _signature_process(hs: HomeServer) -> Samples:
    process = hs.signature_process
    return {
        "ranvier_signature_process_up": int(process is not None and process.pid is not None),
        "ranvier_signature_process_starts_total": 0 if process is None else process.starts,
        "ranvier_signature_process_signatures_checked_total": (
            0 if process is None else process.checked
        ),
    }


def _count_users_and_rooms(conn: sqlite3.Connection) -> tuple[int, int]:
    (users,) = conn.execute("SELECT count(*) FROM users WHERE deactivated = 0").fetchone()
    (rooms,) = conn.execute("SELECT count(*) FROM rooms").fetchone()
    return int(users), int(rooms)
