"""Every Redis key the project keeps, in one place. All start with ``wft:`` (kombu's own keys do not:
``unacked``, ``unacked_index``, ``_kombu.binding.*`` and one list per queue and priority level).

Kept beside the broker, in ``REDIS_URL`` unless said otherwise. Key names are part of the operational
interface: dashboards, scripts and older workers of a rolling upgrade read them, so a rename is a migration.
"""

from __future__ import annotations

PREFIX = "wft:"

# --- the fabric ---------------------------------------------------------------------------------------
#: Hash per message: delivery count per attempt (fabric.deliveries).
DELIVERIES = PREFIX + "deliveries:"
#: The outcome of a bulk envelope, and of a logical message with an id of its own (fabric.statuses).
ENVELOPE = PREFIX + "envelope:"
ITEM = PREFIX + "item:"
#: Dead letters: records by id, ids by time, counts by queue (fabric.dead_letters).
DEAD_LETTER_ITEMS = PREFIX + "dlq:items"
DEAD_LETTER_INDEX = PREFIX + "dlq:index"
DEAD_LETTER_COUNTS = PREFIX + "dlq:counts"
#: Worker leases, in the broker's Redis: lease id -> expiry, and the delivery tags each lease claims.
LEASES = PREFIX + "leases"
LEASE = PREFIX + "lease:"
#: celery-redbeat's schedule, last run times and lock.
BEAT = PREFIX + "beat:"

# --- services and workflows ---------------------------------------------------------------------------
#: Circuit breaker state per backend (services.resilience).
BREAKER = PREFIX + "breaker:"
#: The fleet's Prometheus counters and histograms (services.metrics).
METRICS = PREFIX + "metrics:"
#: Per-workflow statistics (services.analytics).
STATS = PREFIX + "stats:"
#: Flush counters of the per-process bulk writers (tasks.batching).
BATCHING_STATS = PREFIX + "batching:stats"
#: A running execution checks this between steps (workflows.pipelines.cancel_execution).
CANCEL = PREFIX + "cancel:"
#: Where an interrupted ``wft reindex`` resumes.
REINDEX_CURSOR = PREFIX + "reindex:cursor"
#: Messages the HTTP API sent, by id, so their statuses can be told from unknown ids (api.routes.tracking).
API_SENT = PREFIX + "api:sent:"


def deliveries(message_id: str) -> str:
    return DELIVERIES + message_id


def envelope(envelope_id: str) -> str:
    return ENVELOPE + envelope_id


def item(message_id: str) -> str:
    return ITEM + message_id


def lease(lease_id: str) -> str:
    return LEASE + lease_id


def cancel(execution_id: str) -> str:
    return CANCEL + execution_id
