"""``GET /metrics``: the pipeline's backlog and outcomes in Prometheus text format, and the
same figures for ``dunning status`` (:func:`health`).

Gauges read from the database on each scrape (a few GROUP BYs over indexed columns), so every
intake replica reports the same fleet-wide numbers and nothing is lost on restart. The
counters and histograms of the work each process does are :mod:`worker.telemetry`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.dunning.cases import provider_retries_planned
from worker.dunning.models import ActionKind, ActionStatus, DunningCase, ScheduledAction
from worker.dunning.scheduler import last_tick
from worker.dunning.state import TERMINAL, DunningState
from worker.webhooks.models import InboxEvent, InboxStatus

# An action is overdue once it is this far past its time: the scheduler ticks every 10 s.
OVERDUE_AFTER = timedelta(minutes=2)


@dataclass(frozen=True)
class Backlog:
    """What is waiting: events not processed yet, actions past their time (an outage, too few
    workers) and the oldest of each, in seconds."""

    pending_events: int
    oldest_pending_event_s: float
    overdue_actions: int
    oldest_overdue_action_s: float


def backlog(session: Session, *, now: datetime) -> Backlog:
    events, oldest_event = session.execute(
        select(func.count(), func.min(InboxEvent.received_at)).where(
            InboxEvent.status == InboxStatus.PENDING
        )
    ).one()
    actions, oldest_action = session.execute(
        select(func.count(), func.min(ScheduledAction.due_at)).where(
            ScheduledAction.status.in_([ActionStatus.PLANNED, ActionStatus.CLAIMED]),
            ScheduledAction.due_at < now - OVERDUE_AFTER,
        )
    ).one()
    return Backlog(
        events,
        (now - oldest_event).total_seconds() if oldest_event else 0.0,
        actions,
        (now - oldest_action).total_seconds() if oldest_action else 0.0,
    )


@dataclass(frozen=True)
class Health:
    """Everything ``dunning status`` shows from the database, in one read."""

    backlog: Backlog
    failed_events: int
    due_actions: int  # planned or claimed, due now or earlier
    failed_actions: int
    failed_actions_last_day: int
    open_cases: dict[str, int]  # by state, every non-final state listed
    last_tick_at: datetime | None
    last_tick_claimed: int
    last_tick_swept: int


def health(session: Session, *, now: datetime) -> Health:
    failed_events = session.scalar(
        select(func.count()).where(InboxEvent.status == InboxStatus.FAILED)
    )
    due = session.scalar(
        select(func.count()).where(
            ScheduledAction.status.in_([ActionStatus.PLANNED, ActionStatus.CLAIMED]),
            ScheduledAction.due_at <= now,
        )
    )
    failed, failed_recently = session.execute(
        select(
            func.count(),
            func.count().filter(ScheduledAction.finished_at >= now - timedelta(days=1)),
        ).where(ScheduledAction.status == ActionStatus.FAILED)
    ).one()
    by_state = dict(
        session.execute(
            select(DunningCase.state, func.count())
            .where(DunningCase.state.not_in(TERMINAL))
            .group_by(DunningCase.state)
        ).all()
    )
    tick = last_tick(session)
    return Health(
        backlog=backlog(session, now=now),
        failed_events=failed_events or 0,
        due_actions=due or 0,
        failed_actions=failed,
        failed_actions_last_day=failed_recently,
        open_cases={
            state.value: by_state.get(state, 0) for state in DunningState if state not in TERMINAL
        },
        last_tick_at=tick.at if tick else None,
        last_tick_claimed=tick.claimed if tick else 0,
        last_tick_swept=tick.swept if tick else 0,
    )


def render_metrics(session: Session, *, now: datetime) -> str:
    lines: list[str] = []

    def gauge(name: str, text: str, rows: list[tuple[dict[str, str], float]]) -> None:
        lines.extend([f"# HELP {name} {text}", f"# TYPE {name} gauge"])
        for labels, value in rows:
            rendered = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            lines.append(f"{name}{{{rendered}}} {value:g}" if rendered else f"{name} {value:g}")

    inbox = session.execute(select(InboxEvent.status, func.count()).group_by(InboxEvent.status))
    gauge(
        "dunning_inbox_events",
        "Provider events by processing status.",
        [({"status": status.value}, n) for status, n in inbox],
    )
    waiting = backlog(session, now=now)
    gauge(
        "dunning_inbox_oldest_pending_seconds",
        "Age of the oldest unprocessed event.",
        [({}, waiting.oldest_pending_event_s)],
    )
    due = dict(
        session.execute(
            select(ScheduledAction.kind, func.count())
            .where(
                ScheduledAction.status.in_([ActionStatus.PLANNED, ActionStatus.CLAIMED]),
                ScheduledAction.due_at <= now,
            )
            .group_by(ScheduledAction.kind)
        ).all()
    )
    gauge(
        "dunning_actions_due",
        "Actions whose time has come and that are not done yet (planned or running), by kind.",
        [({"kind": kind.value}, due.get(kind, 0)) for kind in ActionKind],
    )
    gauge(
        "dunning_actions_oldest_overdue_seconds",
        "How long the oldest action not done yet has been past its time (0: none overdue).",
        [({}, waiting.oldest_overdue_action_s)],
    )
    gauge(
        "dunning_provider_retries_planned",
        "Open cases we retry whose invoice the provider will retry too (Smart Retries on).",
        [({}, provider_retries_planned(session, now=now))],
    )
    cases = session.execute(select(DunningCase.state, func.count()).group_by(DunningCase.state))
    gauge(
        "dunning_cases",
        "Dunning cases by state.",
        [({"state": state.value}, n) for state, n in cases],
    )
    actions = session.execute(
        select(ScheduledAction.kind, ScheduledAction.status, func.count()).group_by(
            ScheduledAction.kind, ScheduledAction.status
        )
    )
    gauge(
        "dunning_scheduled_actions",
        "Planned, running and finished actions.",
        [({"kind": kind.value, "status": status.value}, n) for kind, status, n in actions],
    )
    return "\n".join(lines) + "\n"
