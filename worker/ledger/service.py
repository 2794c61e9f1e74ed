"""Ledger rows written when a dunning case ends (or a churned one pays after all).

Callers pass plain values (the case's ids, the method, the times); the amounts come from the
invoice and its subscription. Each row has a deterministic dedupe key, so a replayed
transition never books twice. ``occurred_at`` is when it happened; ``recorded_at`` is our clock
when we booked it, which is what a report ``--as-of`` an earlier time filters on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.billing.models import Invoice, Subscription
from worker.ledger.models import LedgerMovement, MovementKind, RecoveryMethod


@dataclass(frozen=True)
class CaseRef:
    """Which dunning case a row is booked for: its id, customer and invoice (our row ids)."""

    case_id: int
    customer_id: int
    invoice_id: int


def _book(
    session: Session,
    case: CaseRef,
    *,
    kind: MovementKind,
    amount: int,
    currency: str,
    at: datetime,
    now: datetime,
    subscription_id: int | None,
    method: RecoveryMethod | None = None,
) -> None:
    key = f"case:{case.case_id}:{_KEY_SUFFIX[kind]}"
    if session.scalar(select(LedgerMovement.id).where(LedgerMovement.dedupe_key == key)):
        return
    session.add(
        LedgerMovement(
            dedupe_key=key,
            kind=kind,
            customer_id=case.customer_id,
            subscription_id=subscription_id,
            case_id=case.case_id,
            amount=amount,
            currency=currency,
            method=method,
            occurred_at=at,
            recorded_at=now,
        )
    )


_KEY_SUFFIX = {
    MovementKind.RECOVERY: "recovery",
    MovementKind.CHURN_INVOLUNTARY: "churn",
    MovementKind.REACTIVATION: "reactivation",
}


def record_recovery(
    session: Session, case: CaseRef, *, method: RecoveryMethod, at: datetime, now: datetime
) -> None:
    invoice = session.get_one(Invoice, case.invoice_id)
    _book(
        session,
        case,
        kind=MovementKind.RECOVERY,
        amount=invoice.amount_due,
        currency=invoice.currency,
        at=at,
        now=now,
        subscription_id=invoice.subscription_id,
        method=method,
    )


def record_involuntary_churn(
    session: Session, case: CaseRef, *, at: datetime, now: datetime
) -> None:
    """The subscription's MRR leaves as involuntary churn (invoice amount if we know no MRR)."""
    invoice = session.get_one(Invoice, case.invoice_id)
    sub = session.get(Subscription, invoice.subscription_id) if invoice.subscription_id else None
    amount = sub.mrr if sub is not None and sub.mrr else invoice.amount_due
    currency = (sub.currency if sub is not None and sub.currency else None) or invoice.currency
    _book(
        session,
        case,
        kind=MovementKind.CHURN_INVOLUNTARY,
        amount=amount,
        currency=currency,
        at=at,
        now=now,
        subscription_id=invoice.subscription_id,
    )


def record_reactivation(session: Session, case: CaseRef, *, at: datetime, now: datetime) -> None:
    invoice = session.get_one(Invoice, case.invoice_id)
    sub = session.get(Subscription, invoice.subscription_id) if invoice.subscription_id else None
    amount = sub.mrr if sub is not None and sub.mrr else invoice.amount_due
    _book(
        session,
        case,
        kind=MovementKind.REACTIVATION,
        amount=amount,
        currency=invoice.currency,
        at=at,
        now=now,
        subscription_id=invoice.subscription_id,
    )
