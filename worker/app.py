"""The Celery app factory (STYLE H2, H3): every option stated once, with why."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from celery import Celery, current_task, signals
from celery.utils.log import get_multiprocessing_logger

from worker import logs
from worker.dunning import tasks as dunning_tasks
from worker.enqueue import QUEUES
from worker.runtime import Runtime
from worker.schedule import beat_schedule
from worker.settings import EMBEDDED_BROKER_URL, Settings
from worker.telemetry import TASK_SECONDS, TASK_WAIT_SECONDS, TASKS
from worker.webhooks import tasks as webhooks_tasks

log = logging.getLogger(__name__)

# Imported above so that creating the app registers their tasks; the worker also imports
# them by name at boot. Task modules never import this one (enqueueing is worker.enqueue).
TASK_MODULES = (webhooks_tasks.__name__, dunning_tasks.__name__)
ROUTES = {
    "webhooks.*": {"queue": "intake"},
    "dunning.tick": {"queue": "scheduler"},  # a webhook backlog must not delay retries
    "dunning.retry_payment": {"queue": "payments"},
    "dunning.final_action": {"queue": "payments"},
    "dunning.send_email": {"queue": "emails"},
    # Access changes and the app's webhooks: customer-facing like emails, never in front of
    # a charge.
    "dunning.access_change": {"queue": "emails"},
    "dunning.notify_app": {"queue": "emails"},
    # Minutes of paging on a large account: never in front of the tick or a retry.
    "cards.scan_expiring": {"queue": "emails"},
}


class DunningCelery(Celery):
    runtime: Runtime


def _broker(settings: Settings) -> dict[str, Any]:
    if settings.broker_url != EMBEDDED_BROKER_URL:
        # Redis: a task not acked within this time is redelivered. Long waits never sit in
        # the broker (they live in scheduled_actions), so one hour only covers slow tasks.
        # Short socket timeouts: a frozen Redis fails a send in seconds, not minutes (the
        # sweeper hands over what was not sent).
        return {
            "broker_url": settings.broker_url,
            "broker_transport_options": {
                "visibility_timeout": 3600,
                "socket_connect_timeout": 2,
                "socket_timeout": 5,
                "max_retries": 1,
            },
            "broker_connection_timeout": 2,
        }
    folder = (settings.data_dir / "broker").resolve()
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    # A broker with no server, shared by processes on one host (see worker.embedded_broker).
    return {
        "broker_url": None,
        "broker_transport": "worker.embedded_broker:Transport",
        "broker_transport_options": {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            # kombu's exchange tables: under the data directory, not in whatever folder a
            # command happens to run in
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": 0.05,
        },
    }


def create_app(settings: Settings, runtime: Runtime | None = None) -> DunningCelery:
    app = DunningCelery("dunning", set_as_current=False)
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # beat's schedule file lives here
    app.conf.update(
        **_broker(settings),
        broker_connection_retry_on_startup=True,
        # A worker killed mid-task must not lose it: ack after the task, and requeue when the
        # worker process dies. Every task is idempotent (keys + unique rows), so redelivery
        # is safe.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Nobody reads results; storing them costs ~25 % throughput (perf-floors.md).
        task_ignore_result=True,
        # JSON only: ids and strings travel, never pickled objects or floats for money.
        task_serializer="json",
        accept_content=["json"],
        # A Stripe call is bounded by tenacity (seconds); anything slower is stuck.
        task_soft_time_limit=60,
        task_time_limit=90,
        # One message at a time per process: fair dispatch for slow provider calls.
        worker_prefetch_multiplier=1,
        # We configure logging ourselves (and never log secrets or full emails).
        worker_hijack_root_logger=False,
        task_queues={name: {"exchange": name, "routing_key": name} for name in QUEUES},
        task_default_queue="intake",
        task_routes=ROUTES,
        imports=TASK_MODULES,
        beat_schedule=beat_schedule(),
        beat_schedule_filename=str(settings.data_dir / "beat-schedule"),
        timezone="UTC",
    )
    app.runtime = runtime or Runtime(settings)
    return app


@signals.setup_logging.connect
def _keep_our_logging(loglevel: int | None = None, **_: Any) -> None:
    """Worker and beat log through the root handler the ``dunning`` command set up (text or
    JSON, masked: :mod:`worker.logs`); Celery adds no handler of its own. Its ``--loglevel``
    only lowers the root level (``-v`` keeps DEBUG)."""
    root = logging.getLogger()
    if not root.handlers:  # a Celery started some other way: still masked, as text
        logs.configure(level=logging.WARNING, log_format="text")
    if loglevel:
        root.setLevel(min(root.level, loglevel))
    for handler in root.handlers:
        if not any(isinstance(f, _TaskFields) for f in handler.filters):
            handler.addFilter(_TaskFields())
    # billiard's pool logger is kept apart from the root (Python's last-resort handler would
    # print it raw): it goes through the root's handlers, errors only (a pool process that
    # died), as Celery's own set-up has it.
    pool_logger = get_multiprocessing_logger()
    if pool_logger is not None:
        pool_logger.setLevel(logging.ERROR)
        pool_logger.propagate = True


class _TaskFields(logging.Filter):
    """Names the Celery task a record was logged from (JSON fields ``task``, ``task_id``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = current_task
        if task and task.request.id and not hasattr(record, "task"):
            record.task, record.task_id = task.name, task.request.id
        return True


# Task metrics (worker.telemetry): time in the broker, run time and end state of every task
# this process runs. Real time, not worker.clock: these measure the machinery.
_started: dict[str, float] = {}
SENT_AT = "dunning_sent_at"  # a message header: when it was sent (Unix time)


@signals.before_task_publish.connect
def _stamp_sending(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        headers[SENT_AT] = time.time()


@signals.task_prerun.connect
def _task_started(task_id: str, task: Any, **_: Any) -> None:
    _started[task_id] = time.perf_counter()
    sent = getattr(task.request, SENT_AT, None)
    if isinstance(sent, int | float):
        eta = task.request.eta  # a retry's countdown is no wait
        if isinstance(eta, str):
            eta = datetime.fromisoformat(eta)
        since = max(sent, eta.timestamp()) if isinstance(eta, datetime) else sent
        TASK_WAIT_SECONDS.labels(task.name).observe(max(0.0, time.time() - since))


@signals.task_postrun.connect
def _task_finished(task_id: str, task: Any, state: str | None = None, **_: Any) -> None:
    started = _started.pop(task_id, None)
    if started is not None:
        TASK_SECONDS.labels(task.name).observe(time.perf_counter() - started)
    TASKS.labels(task.name, (state or "unknown").lower()).inc()
