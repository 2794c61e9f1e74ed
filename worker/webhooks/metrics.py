"""``GET /metrics``: the pipeline's backlog and outcomes in Prometheus text format.

Gauges read from the database on each scrape (a few GROUP BYs over indexed columns), so every
intake replica reports the same fleet-wide numbers and nothing is lost on restart.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.dunning.cases import provider_retries_planned
from worker.dunning.models import DunningCase, ScheduledAction
from worker.webhooks.models import InboxEvent, InboxStatus


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
    oldest = session.scalar(
        select(func.min(InboxEvent.received_at)).where(InboxEvent.status == InboxStatus.PENDING)
    )
    gauge(
        "dunning_inbox_oldest_pending_seconds",
        "Age of the oldest unprocessed event.",
        [({}, (now - oldest).total_seconds() if oldest else 0.0)],
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
