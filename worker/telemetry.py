"""Prometheus counters and histograms of the work a process does (README "Metrics").

Each is counted where the work happens, at its one choke point: the intake's requests (an
ASGI wrapper in :mod:`worker.webhooks.intake`), each HTTP attempt to Stripe
(:meth:`worker.billing.stripe_client.StripeGateway._call`, tenacity's retries included),
events finished (:func:`worker.webhooks.service.process_event`, after its commit), emails
(:func:`worker.dunning.actions.run_email`) and Celery tasks (signals in :mod:`worker.app`).
The backlog gauges are read from the database instead (:mod:`worker.webhooks.metrics`).

Label values come from small fixed sets (routes, statuses, event types, task names,
outcomes), never from a customer, an invoice or an address.

Exposition: ``dunning serve`` adds this process's registry to its ``GET /metrics``.
``dunning worker`` runs tasks in forked pool processes, so it uses prometheus_client's
multiprocess mode: every process writes its values to files in one directory under the data
directory, emptied when the worker starts, and the worker's main process serves their sum
(:func:`serve_worker_metrics`). The mode is chosen when prometheus_client is first imported,
from ``PROMETHEUS_MULTIPROC_DIR``: ``dunning worker`` sets it before importing this module.
Every metric here has labels, so no value exists before a process first counts something.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
    values,
)

INTAKE_REQUESTS = Counter(
    "dunning_intake_requests_total",
    "HTTP requests the intake answered, by route template and status code.",
    ["route", "status"],
)
INTAKE_SECONDS = Histogram(
    "dunning_intake_request_duration_seconds",
    "Time from request to the end of the answer, by route template.",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
EVENTS = Counter(
    "dunning_events_processed_total",
    "Provider events finished: processed, failed (kept with the reason) or ignored.",
    ["type", "outcome"],
)
TASKS = Counter(
    "dunning_tasks_total",
    "Celery tasks run, by task name and end state (success, retry, failure).",
    ["task", "state"],
)
TASK_SECONDS = Histogram(
    "dunning_task_duration_seconds",
    "Run time of each Celery task, by task name.",
    ["task"],
    # up to the hard time limit (worker.app: 90 s)
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 90),
)
TASK_WAIT_SECONDS = Histogram(
    "dunning_task_queue_seconds",
    "Time a task waited in the broker, from its sending (or its eta) to its start, by task "
    "name: too few workers or a stalled queue.",
    ["task"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
)
STRIPE_REQUESTS = Counter(
    "dunning_stripe_requests_total",
    "HTTP attempts to Stripe (each retry counts), by operation and outcome: ok, declined "
    "(a card error), rate_limited (429), client_error (other 4xx), server_error (5xx), "
    "connection_error (network or timeout).",
    ["operation", "outcome"],
)
STRIPE_SECONDS = Histogram(
    "dunning_stripe_request_duration_seconds",
    "Time of each HTTP attempt to Stripe, by operation.",
    ["operation"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 80),
)
STRIPE_BUDGET_WAIT = Histogram(
    "dunning_stripe_budget_wait_seconds",
    "Time a Stripe call waited for the fleet-wide request budget (its token bucket or a "
    "429 pause) before its HTTP attempt, by kind: read or write.",
    ["kind"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STRIPE_BUDGET_REFUSED = Counter(
    "dunning_stripe_budget_refused_total",
    "Stripe calls not made because the fleet-wide budget had no token within the call's "
    "deadline (or could not be reached), by kind: each is retried later as a transient error.",
    ["kind"],
)
EMAILS = Counter(
    "dunning_emails_total",
    "Customer emails by outcome: sent, unconfirmed (sent, answer lost), failed (refused for "
    "good), deferred (SMTP unavailable, tried again), postponed (contact rules), skipped "
    "(too late, not needed, or capped by the contact rules), duplicate (already sent).",
    ["outcome"],
)


def event_type_label(event_type: str | None, known: Collection[str]) -> str:
    """The provider's event type (``invoice.payment_failed``) when it is one of ``known``
    (those we handle), else ``other``: a label value never carries what a sender made up,
    so no delivery can mint new series."""
    return event_type if event_type is not None and event_type in known else "other"


@contextmanager
def timed(histogram: Histogram, *labels: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        histogram.labels(*labels).observe(time.perf_counter() - started)


def exposition() -> bytes:
    """This process's metrics in Prometheus' text format (the intake's ``/metrics``)."""
    return generate_latest(REGISTRY)


def multiprocess_enabled() -> bool:
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def serve_worker_metrics(host: str, port: int, directory: Path) -> None:
    """Serve ``GET /metrics`` on ``host:port`` from a thread of this process: the sum of what
    every process of this worker wrote to ``directory``. Binds first (an address in use
    fails here), then empties the directory: counts of an earlier run are not carried over.
    ``PROMETHEUS_MULTIPROC_DIR`` must have named ``directory`` before prometheus_client was
    first imported."""
    if not multiprocess_enabled():
        msg = "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set"
        raise RuntimeError(msg)
    directory.mkdir(parents=True, exist_ok=True)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    start_http_server(port, addr=host, registry=registry)
    for stale in directory.glob("*.db"):
        stale.unlink()
