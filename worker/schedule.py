"""Every periodic job, in one place (STYLE H13)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

# Claim due actions, sweep the inbox. A tick hands out everything due (up to the in-flight
# bound, worker.dunning.scheduler), so this is how late an action can leave, and how soon
# workers that drained the broker get more.
TICK_EVERY = timedelta(seconds=10)
CARD_SCAN_EVERY = timedelta(days=1)  # default cards expiring soon (worker.dunning.expiring)

SCHEDULE: tuple[tuple[str, timedelta, str], ...] = (
    ("scheduler-tick", TICK_EVERY, "dunning.tick"),
    ("card-expiry-scan", CARD_SCAN_EVERY, "cards.scan_expiring"),
)


def beat_schedule() -> dict[str, dict[str, Any]]:
    # A tick not started before the next one is due is dropped, not piled up.
    return {
        name: {
            "task": task,
            "schedule": every.total_seconds(),
            "options": {"expires": every.total_seconds()},
        }
        for name, every, task in SCHEDULE
    }
