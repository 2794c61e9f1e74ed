"""Graded access: what the customer's app should allow while an invoice is unpaid, and the
events that tell it.

A case opens in ``grace`` (full access; show a banner), becomes ``limited`` and then
``blocked`` on the ``[access]`` schedule (days after it opened; ACCESS_CHANGE actions, so a
pause holds them and a resume catches up), and is ``restored`` when the invoice is paid or the
case closes; a churned case stays ``blocked``. The customer's level is the strictest of their
open cases (:func:`customer_access`, served at ``GET /v1/customers/{id}/access``).

Every change is also an event for the app (``case.opened``, ``access.grace``,
``access.limited``, ``access.blocked``, ``access.restored``, ``case.recovered``,
``case.churned``): an ``app_events`` row, unique per case and type, whose NOTIFY_APP action
delivers it signed (:mod:`worker.appwebhook`) at least once, retried with a back-off until
:data:`DELIVERY_HORIZON`. The payload's ``created`` is when the fact happened at the provider;
deliveries may arrive out of order.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.billing.models import Customer, Invoice, by_provider_id
from worker.config import Policy
from worker.dunning.models import ActionKind, AppEvent, DunningCase, ScheduledAction, new_action
from worker.dunning.state import TERMINAL, DunningState

DELIVERY_HORIZON = timedelta(days=3)  # as Stripe: a receiver down longer gets FAILED rows


class Access(StrEnum):
    FULL = "full"
    GRACE = "grace"
    LIMITED = "limited"
    BLOCKED = "blocked"


_STRICTNESS = {Access.FULL: 0, Access.GRACE: 1, Access.LIMITED: 2, Access.BLOCKED: 3}


def schedule(
    policy: Policy, *, opened_at: datetime, now: datetime
) -> list[tuple[Access, datetime, str]]:
    """The levels after grace, when they come and why (planning and ``policy preview``)."""
    return [
        (
            level,
            max(opened_at + timedelta(days=days), now),
            f"access: {level.value} {days:g} days after the failure",
        )
        for level, days in (
            (Access.LIMITED, policy.access.limited_after_days),
            (Access.BLOCKED, policy.access.blocked_after_days),
        )
    ]


def grace(case: DunningCase) -> None:
    """The level a case opens at: full access, with a banner."""
    case.access, case.access_since = Access.GRACE, case.opened_at


def on_open(session: Session, case: DunningCase, *, policy: Policy, now: datetime) -> None:
    """A case opened: grace now, the later levels planned. Its first move out of ``open``
    does this, once: nothing keyed by the case exists yet, so the rows are written without
    looking (the unique keys still guard them)."""
    grace(case)
    for type_ in ("case.opened", "access.grace"):
        _add(session, case, type_, at=case.opened_at, now=now)
    for level, at, reason in schedule(policy, opened_at=case.opened_at, now=now):
        session.add(
            new_action(
                case_id=case.id,
                customer_id=case.customer_id,
                kind=ActionKind.ACCESS_CHANGE,
                due_at=at,
                idempotency_key=f"case:{case.id}:access:{level.value}",
                template=level.value,
                reason=reason,
                created_at=now,
            )
        )


def change(session: Session, case: DunningCase, level: Access, *, now: datetime) -> str:
    """A planned level is due (the case is open and not paused: the caller checked)."""
    if _STRICTNESS[Access(case.access or Access.FULL)] >= _STRICTNESS[level]:
        return f"access already {case.access}"
    case.access, case.access_since = level, now
    record(session, case, f"access.{level.value}", at=now, now=now)
    return f"access {level.value}"


def on_end(
    session: Session, case: DunningCase, new: DunningState, *, at: datetime, now: datetime
) -> None:
    """The case ended: paid (restored, recovered), churned (blocked, churned) or closed
    otherwise (restored)."""
    if case.access is None:
        return  # it never restricted anything (opened before graded access existed)
    if new is DunningState.CHURNED:
        if case.access != Access.BLOCKED:
            case.access, case.access_since = Access.BLOCKED, at
            record(session, case, "access.blocked", at=at, now=now)
        record(session, case, "case.churned", at=at, now=now)
        return
    case.access, case.access_since = None, at
    record(session, case, "access.restored", at=at, now=now)
    if new is DunningState.RECOVERED:
        record(session, case, "case.recovered", at=at, now=now)


def record(session: Session, case: DunningCase, type_: str, *, at: datetime, now: datetime) -> None:
    """The event ``type_`` for ``case`` (once), and the action that delivers it."""
    key = f"app:case:{case.id}:{type_}"
    if session.scalar(select(AppEvent.id).where(AppEvent.dedupe_key == key)):
        return
    # Apps order a case's events by `created`: a change we record now (a level that came
    # due) may be later than a fact the provider dated earlier but told us after (a payment
    # made a minute before): what we record last is never dated before what came first.
    latest = session.scalar(
        select(func.max(AppEvent.created_at)).where(AppEvent.case_id == case.id)
    )
    _add(session, case, type_, at=max(at, latest) if latest is not None else at, now=now)


def _add(session: Session, case: DunningCase, type_: str, *, at: datetime, now: datetime) -> None:
    key = f"app:case:{case.id}:{type_}"
    customer = session.get_one(Customer, case.customer_id)
    invoice = session.get_one(Invoice, case.invoice_id)
    event_id = "evt_dw_" + hashlib.sha256(key.encode()).hexdigest()[:24]
    payload: dict[str, Any] = {
        "id": event_id,
        "object": "event",
        "type": type_,
        "created": int(at.timestamp()),
        "data": {
            "customer": customer.provider_id,
            "invoice": invoice.provider_id,
            "case": case.id,
            "access": case.access or Access.FULL.value,
            "amount_due": invoice.amount_due,
            "currency": invoice.currency,
            "window_ends_at": case.window_ends_at.isoformat(),
        },
    }
    session.add(
        AppEvent(
            event_id=event_id,
            dedupe_key=key,
            type=type_,
            customer_id=case.customer_id,
            case_id=case.id,
            payload=payload,
            created_at=at,
            attempts=0,
        )
    )
    session.add(
        new_action(
            case_id=None,  # not the case's to cancel: a fact that happened is always told
            customer_id=case.customer_id,
            kind=ActionKind.NOTIFY_APP,
            due_at=now,
            idempotency_key=key,
            template=type_,
            reason=f"tell the app: {type_}",
            created_at=now,
        )
    )


def customer_access(session: Session, customer_provider_id: str) -> dict[str, Any] | None:
    """The customer's access as the app's banner needs it, or None for a customer we do not
    know: the strictest level of their open cases, and those cases."""
    customer = session.scalar(
        select(Customer).where(by_provider_id(Customer, customer_provider_id))
    )
    if customer is None:
        return None
    cases = session.scalars(
        select(DunningCase)
        .where(DunningCase.customer_id == customer.id, DunningCase.state.not_in(TERMINAL))
        .order_by(DunningCase.opened_at)
    ).all()
    level, since = Access.FULL, None
    invoices = []
    for case in cases:
        own = Access(case.access or Access.FULL)
        if _STRICTNESS[own] > _STRICTNESS[level]:
            level, since = own, case.access_since
        invoice = session.get_one(Invoice, case.invoice_id)
        invoices.append(
            {
                "invoice": invoice.provider_id,
                "amount_due": invoice.amount_due,
                "currency": invoice.currency,
                "access": own.value,
                "window_ends_at": case.window_ends_at.isoformat(),
            }
        )
    return {
        "customer": customer_provider_id,
        "access": level.value,
        "since": since.isoformat() if since else None,
        "open_invoices": invoices,
    }


def deliveries(
    session: Session, *, status: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The delivery log, newest first: ``status`` pending, delivered, failed (gave up) or
    skipped (no webhook URL configured)."""
    rows = session.execute(
        select(AppEvent, ScheduledAction.status, ScheduledAction.note)
        .join(ScheduledAction, ScheduledAction.idempotency_key == AppEvent.dedupe_key)
        .order_by(AppEvent.id.desc())
    ).all()
    found = []
    for event, action_status, note in rows:
        state = (
            "delivered"
            if event.delivered_at
            else {"failed": "failed", "done": "skipped"}.get(action_status.value, "pending")
        )
        if status is not None and state != status:
            continue
        found.append(
            {
                "event": event.event_id,
                "type": event.type,
                "customer": event.payload["data"]["customer"],
                "created": event.created_at.isoformat(),
                "status": state,
                "attempts": event.attempts,
                "last_status": event.last_status,
                "last_error": event.last_error,
                "delivered_at": event.delivered_at.isoformat() if event.delivered_at else None,
                "note": note,
            }
        )
        if len(found) >= limit:
            break
    return found
