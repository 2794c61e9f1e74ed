"""The monthly MRR ledger (``mrr_movements``), kept in step with ``mrr_changes``.

After any change to a customer's MRR history, :func:`refresh_customer` recomputes that
customer's monthly movements with the report engine and appends the difference from what the
ledger already holds, stamped with the time it was learned: nothing is ever updated, so the
ledger as of any earlier time is still there. Runs in the caller's transaction, holding the
customer's row lock so two events for one customer cannot both append the same correction.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.billing.models import Customer
from worker.ledger.models import MrrChange, MrrMovement, MrrMovementKind
from worker.ledger.movements import COLUMNS, Change, customer_months

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def lock_customer(session: Session, customer_id: int) -> None:
    """Serialise ledger writes per customer. ``FOR NO KEY UPDATE``: it does not conflict
    with the key-share locks that inserting rows referencing the customer take, so two
    writers queue here instead of deadlocking."""
    session.scalar(
        select(Customer.id).where(Customer.id == customer_id).with_for_update(key_share=True)
    )


def last_recorded(session: Session, customer_id: int) -> datetime:
    """The latest ``recorded_at`` of the customer's history and ledger rows (or the epoch)."""
    found = [
        session.scalar(select(func.max(table.recorded_at)).where(table.customer_id == customer_id))
        for table in (MrrChange, MrrMovement)
    ]
    return max((t for t in found if t is not None), default=_EPOCH)


def refresh_customer(session: Session, customer_id: int, *, now: datetime) -> int:
    """Append the corrections that make the customer's monthly ledger match their MRR
    history, stamped ``now``; returns how many rows that took. The caller holds the
    customer's lock (:func:`lock_customer`) and passes a ``now`` no earlier than anything
    recorded for the customer (:func:`last_recorded`)."""
    changes = [
        Change(*row)
        for row in session.execute(
            select(*COLUMNS)
            .where(MrrChange.customer_id == customer_id)
            .order_by(MrrChange.subscription_id, MrrChange.effective_at, MrrChange.id)
        )
    ]
    wanted = customer_months(changes)
    key = (MrrMovement.month, MrrMovement.currency, MrrMovement.cohort, MrrMovement.kind)
    held = {
        (month, currency, cohort, kind.value): amount
        for month, currency, cohort, kind, amount in session.execute(
            select(*key, func.sum(MrrMovement.amount))
            .where(MrrMovement.customer_id == customer_id)
            .group_by(*key)
        )
    }
    added = 0
    for month, currency, cohort, kind in sorted(wanted.keys() | held.keys()):
        delta = wanted.get((month, currency, cohort, kind), 0) - held.get(
            (month, currency, cohort, kind), 0
        )
        if delta:
            session.add(
                MrrMovement(
                    customer_id=customer_id,
                    currency=currency,
                    month=month,
                    kind=MrrMovementKind(kind),
                    cohort=cohort,
                    amount=delta,
                    recorded_at=now,
                )
            )
            added += 1
    session.flush()
    return added
