"""Read models for ops: case summaries and timelines (``dunning cases ...``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.billing.models import Customer, Invoice, PaymentAttempt
from worker.dunning.models import ActionStatus, CaseTransition, DunningCase, ScheduledAction
from worker.dunning.state import DunningState
from worker.email.i18n import SOURCE_LANGUAGE, catalog_for, email_locale
from worker.email.models import Notification, NotificationStatus
from worker.ledger.models import LedgerMovement, MovementKind


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _summary_query():
    attempts = (
        select(func.count())
        .select_from(PaymentAttempt)
        .where(PaymentAttempt.invoice_id == DunningCase.invoice_id)
        .correlate(DunningCase)
        .scalar_subquery()
    )
    next_action = (
        select(func.min(ScheduledAction.due_at))
        .where(
            ScheduledAction.case_id == DunningCase.id,
            ScheduledAction.status.in_([ActionStatus.PLANNED, ActionStatus.CLAIMED]),
        )
        .correlate(DunningCase)
        .scalar_subquery()
    )
    return (
        select(
            DunningCase,
            Invoice,
            Customer.provider_id.label("customer_ref"),
            attempts.label("attempts"),
            next_action.label("next_action_at"),
        )
        .join(Invoice, Invoice.id == DunningCase.invoice_id)
        .join(Customer, Customer.id == DunningCase.customer_id)
    )


def _summary(row: Any) -> dict[str, Any]:
    case, invoice = row.DunningCase, row.Invoice
    return {
        "id": case.id,
        "invoice_id": invoice.provider_id,
        "customer_id": row.customer_ref,
        "state": case.state.value,
        "amount_due": invoice.amount_due,
        "currency": invoice.currency,
        "attempts": row.attempts,
        "decline_code": case.decline_code,
        "decline_class": case.decline_class,
        "next_action_at": _iso(row.next_action_at),
        "opened_at": _iso(case.opened_at),
        "window_ends_at": _iso(case.window_ends_at),
        "retries_mode": case.retries_mode,
        "policy_version": case.policy_version,
        "recovered_method": case.recovered_method,
        # Stripe's own next retry of this invoice; set while we retry too: Smart Retries on.
        "provider_next_attempt": _iso(invoice.next_payment_attempt),
    }


def list_cases(session: Session, *, state: str | None = None) -> list[dict[str, Any]]:
    query = _summary_query().order_by(DunningCase.id)
    if state is not None:
        query = query.where(DunningCase.state == state)
    return [_summary(row) for row in session.execute(query)]


def show_case(session: Session, case_id: int) -> dict[str, Any] | None:
    row = session.execute(_summary_query().where(DunningCase.id == case_id)).first()
    if row is None:
        return None
    detail = _summary(row)
    detail["transitions"] = [
        {
            "at": _iso(t.at),
            "event": t.event.value,
            "from": t.from_state.value,
            "to": t.to_state.value,
            "reason": t.reason,
            "source": t.source,
        }
        for t in session.scalars(
            select(CaseTransition)
            .where(CaseTransition.case_id == case_id)
            .order_by(CaseTransition.id)
        )
    ]
    detail["attempts_detail"] = [
        {
            "at": _iso(a.occurred_at),
            "source": a.source.value,
            "outcome": a.outcome.value,
            "decline_code": a.decline_code or a.code,
            "advice_code": a.advice_code,
            "network_advice_code": a.network_advice_code,
            "card_brand": a.card_brand,
        }
        for a in session.scalars(
            select(PaymentAttempt)
            .where(PaymentAttempt.invoice_id == row.Invoice.id)
            .order_by(PaymentAttempt.occurred_at, PaymentAttempt.id)
        )
    ]
    detail["emails"] = [
        {"at": _iso(n.sent_at), "template": n.template, "to": n.to_masked, "status": n.status.value}
        for n in session.scalars(
            select(Notification).where(Notification.case_id == case_id).order_by(Notification.id)
        )
    ]
    detail["actions"] = [
        {
            "id": a.id,
            "kind": a.kind.value,
            "due_at": _iso(a.due_at),
            "status": a.status.value,
            "template": a.template,
            "reason": a.reason,
            "note": a.note,
            "idempotency_key": a.idempotency_key,
            # the card a retry charges (the provider's id): the default as known when planned
            # and again right before the charge, or the backup card it names
            "payment_method": a.payment_method,
        }
        for a in session.scalars(
            select(ScheduledAction)
            .where(ScheduledAction.case_id == case_id)
            .order_by(ScheduledAction.due_at, ScheduledAction.id)
        )
    ]
    return detail


@dataclass(frozen=True)
class RecoverySummary:
    failed: int
    recovered: int
    by_state: dict[str, int]
    by_method: dict[str, int]
    at_risk: dict[str, int]  # currency -> minor units
    recovered_amount: dict[str, int]
    involuntary_churn_mrr: dict[str, int]
    emails_sent: int
    emails_by_language: dict[str, int]  # the language each email was written in
    card_notices_sent: int

    @property
    def recovery_rate(self) -> float:
        return self.recovered / self.failed if self.failed else 0.0


def recovery_summary(session: Session, *, default_locale: str) -> RecoverySummary:
    """Counts and amounts for the demo's closing summary (full reports come from the ledger)."""
    states = dict(
        session.execute(select(DunningCase.state, func.count()).group_by(DunningCase.state))
        .tuples()
        .all()
    )
    methods = dict(
        session.execute(
            select(DunningCase.recovered_method, func.count())
            .where(DunningCase.state == DunningState.RECOVERED)
            .group_by(DunningCase.recovered_method)
        )
        .tuples()
        .all()
    )
    at_risk = session.execute(
        select(Invoice.currency, func.sum(Invoice.amount_due))
        .join(DunningCase, DunningCase.invoice_id == Invoice.id)
        .group_by(Invoice.currency)
    ).tuples()
    movements: dict[MovementKind, dict[str, int]] = {}
    for kind, currency, amount in session.execute(
        select(
            LedgerMovement.kind, LedgerMovement.currency, func.sum(LedgerMovement.amount)
        ).group_by(LedgerMovement.kind, LedgerMovement.currency)
    ).tuples():
        movements.setdefault(kind, {})[currency] = int(amount)
    sent = (
        session.execute(
            select(Notification.template, Customer.locale)
            .join(Customer, Customer.id == Notification.customer_id)
            .where(Notification.status == NotificationStatus.SENT)
        )
        .tuples()
        .all()
    )
    languages = Counter(
        catalog_for(email_locale(locale, default_locale)) or SOURCE_LANGUAGE for _, locale in sent
    )
    return RecoverySummary(
        failed=sum(states.values()),
        recovered=states.get(DunningState.RECOVERED, 0),
        by_state={state.value: count for state, count in states.items()},
        by_method={str(method): count for method, count in methods.items()},
        at_risk={currency: int(amount) for currency, amount in at_risk},
        recovered_amount=movements.get(MovementKind.RECOVERY, {}),
        involuntary_churn_mrr=movements.get(MovementKind.CHURN_INVOLUNTARY, {}),
        emails_sent=sum(languages.values()),
        emails_by_language=dict(languages),
        card_notices_sent=sum(1 for template, _ in sent if template == "card_expiring"),
    )
