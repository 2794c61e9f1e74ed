"""Ledger rows written when a dunning case ends (or a churned one pays after all).

Each row has a deterministic dedupe key, so a replayed transition never books twice.
``occurred_at`` is when it happened; ``recorded_at`` is our clock when we booked it, which is
what a report ``--as-of`` an earlier time filters on.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.billing.models import Invoice, Subscription
from worker.dunning.models import DunningCase
from worker.ledger.models import LedgerMovement, MovementKind


def _book(
    session: Session,
    *,
    key: str,
    kind: MovementKind,
    case: DunningCase,
    amount: int,
    currency: str,
    at: datetime,
    now: datetime,
    subscription_id: int | None,
    method: str | None = None,
) -> None:
    if session.scalar(select(LedgerMovement.id).where(LedgerMovement.dedupe_key == key)):
        return
    session.add(
        LedgerMovement(
            dedupe_key=key,
            kind=kind,
            customer_id=case.customer_id,
            subscription_id=subscription_id,
            case_id=case.id,
            amount=amount,
            currency=currency,
            method=method,
            occurred_at=at,
            recorded_at=now,
        )
    )


def record_recovery(
    session: Session, case: DunningCase, *, method: str, at: datetime, now: datetime
) -> None:
    invoice = session.get_one(Invoice, case.invoice_id)
    _book(
        session,
        key=f"case:{case.id}:recovery",
        kind=MovementKind.RECOVERY,
        case=case,
        amount=invoice.amount_due,
        currency=invoice.currency,
        at=at,
        now=now,
        subscription_id=invoice.subscription_id,
        method=method,
    )


def record_involuntary_churn(
    session: Session, case: DunningCase, *, at: datetime, now: datetime
) -> None:
    """The subscription's MRR leaves as involuntary churn (invoice amount if we know no MRR)."""
    invoice = session.get_one(Invoice, case.invoice_id)
    sub = session.get(Subscription, invoice.subscription_id) if invoice.subscription_id else None
    amount = sub.mrr if sub is not None and sub.mrr else invoice.amount_due
    currency = (sub.currency if sub is not None and sub.currency else None) or invoice.currency
    _book(
        session,
        key=f"case:{case.id}:churn",
        kind=MovementKind.CHURN_INVOLUNTARY,
        case=case,
        amount=amount,
        currency=currency,
        at=at,
        now=now,
        subscription_id=invoice.subscription_id,
    )


def record_reactivation(
    session: Session, case: DunningCase, *, at: datetime, now: datetime
) -> None:
    invoice = session.get_one(Invoice, case.invoice_id)
    sub = session.get(Subscription, invoice.subscription_id) if invoice.subscription_id else None
    amount = sub.mrr if sub is not None and sub.mrr else invoice.amount_due
    _book(
        session,
        key=f"case:{case.id}:reactivation",
        kind=MovementKind.REACTIVATION,
        case=case,
        amount=amount,
        currency=invoice.currency,
        at=at,
        now=now,
        subscription_id=invoice.subscription_id,
    )
