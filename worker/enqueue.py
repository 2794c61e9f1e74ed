"""Handing a task to the broker after a commit, by name, without ever failing the caller.

Lives below every task module so that none of them imports the Celery app factory
(:mod:`worker.app`), which imports them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery

log = logging.getLogger(__name__)


def send_safely(app: Celery, name: str, **kwargs: Any) -> Callable[[], None]:
    """An after-commit callback that enqueues ``name``; a broker outage is logged, not raised
    (the sweeper re-enqueues whatever stays pending)."""

    def send() -> None:
        try:
            app.send_task(name, kwargs=kwargs, retry=False)
        except Exception as exc:  # any broker failure: the sweeper catches up
            log.warning("enqueue of %s failed, sweeper will retry: %s", name, type(exc).__name__)

    return send
