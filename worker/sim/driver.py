"""Driving the pipeline in-process with a simulated clock (the demo and the tests).

``settle`` is what "wait for the system to catch up" means: deliver the peer's webhooks, let
the scheduler tick, and wait until no inbox event is pending and no claimed action is running;
repeat until a round changes nothing. :class:`Timeline` holds scripted moves in time order.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import func, select

from worker.app import DunningCelery
from worker.dunning.models import ActionStatus, ScheduledAction
from worker.sim.stripe_peer import StripePeer
from worker.webhooks.models import InboxEvent, InboxStatus
from worker.webhooks.tasks import tick_once

SETTLE_TIMEOUT_S = 30.0


class Timeline:
    """Scripted moves, in time order (ties in the order they were added)."""

    def __init__(self) -> None:
        self._heap: list[tuple[datetime, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def at(self, when: datetime, move: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), move))

    def next_time(self) -> datetime | None:
        return self._heap[0][0] if self._heap else None

    def run_due(self, now: datetime) -> None:
        """Every move due by ``now``, those the moves add included."""
        while self._heap and self._heap[0][0] <= now:
            heapq.heappop(self._heap)[2]()


def settle(app: DunningCelery, peer: StripePeer, *, timeout: float = SETTLE_TIMEOUT_S) -> bool:
    """True once a round delivers nothing, claims nothing and leaves nothing in flight."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        delivered = peer.deliver_pending()
        ticked = tick_once(app)
        if not wait_quiet(app, deadline):
            return False
        if delivered == 0 and ticked == 0 and not peer.pending_events():
            return True
    return False


def wait_quiet(app: DunningCelery, deadline: float) -> bool:
    while time.monotonic() < deadline:
        with app.runtime.session() as session:
            pending = (
                session.scalar(
                    select(func.count())
                    .select_from(InboxEvent)
                    .where(InboxEvent.status == InboxStatus.PENDING)
                )
                or 0
            )
            running = (
                session.scalar(
                    select(func.count())
                    .select_from(ScheduledAction)
                    .where(ScheduledAction.status == ActionStatus.CLAIMED)
                )
                or 0
            )
        if pending + running == 0:
            return True
        time.sleep(0.02)
    return False


def next_due(app: DunningCelery) -> datetime | None:
    """When the scheduler will next find work."""
    with app.runtime.session() as session:
        return session.scalar(
            select(func.min(ScheduledAction.due_at)).where(
                ScheduledAction.status == ActionStatus.PLANNED
            )
        )


def in_flight(app: DunningCelery) -> str:
    """What keeps the pipeline busy (for a timeout's message)."""
    with app.runtime.session() as session:
        events = session.execute(
            select(InboxEvent.event_type, InboxEvent.enqueue_count).where(
                InboxEvent.status == InboxStatus.PENDING
            )
        ).all()
        actions = session.execute(
            select(ScheduledAction.kind, ScheduledAction.idempotency_key).where(
                ScheduledAction.status == ActionStatus.CLAIMED
            )
        ).all()
    return f"pending events: {events}; running actions: {actions}"
