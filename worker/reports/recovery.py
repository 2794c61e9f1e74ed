"""Recovery: dunning cases grouped by the period they opened in (metrics.md, "Recovery").

At risk: cases opened and their invoices' amount due. Recovered: cases whose recovery the
ledger booked by ``as_of``, with amount, method and time to recover. MRR saved: the MRR of
each recovered case's subscription when it recovered. Churned: involuntary churn booked for
cases of the period.
"""

from __future__ import annotations

from datetime import datetime
from fractions import Fraction
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.billing.models import Invoice, Subscription
from worker.dunning.models import DunningCase
from worker.ledger.models import LedgerMovement, MovementKind, MrrChange
from worker.reports.model import RecoveryRow
from worker.reports.periods import Period

_DAY_SECONDS = 86_400


def recovery_rows(
    session: Session, periods: list[Period], segment: str | None, as_of: datetime
) -> list[RecoveryRow]:
    if not periods:
        return []
    first, last = min(p.start for p in periods), max(p.end for p in periods)
    cases = session.execute(
        select(
            DunningCase.id,
            DunningCase.customer_id,
            DunningCase.opened_at,
            Invoice.amount_due,
            Invoice.currency,
            Invoice.subscription_id,
            Subscription.plan,
            Subscription.interval,
            Subscription.mrr,
        )
        .join(Invoice, Invoice.id == DunningCase.invoice_id)
        .outerjoin(Subscription, Subscription.id == Invoice.subscription_id)
        .where(
            DunningCase.opened_at >= first,
            DunningCase.opened_at < last,
            DunningCase.opened_at <= as_of,
        )
        .order_by(DunningCase.opened_at, DunningCase.id)
    ).all()
    booked = _booked(session, [c.id for c in cases], as_of)
    cohorts = _cohorts(session, as_of) if segment == "cohort" else {}
    totals: dict[tuple[Period, str | None, str], RecoveryRow] = {}
    for case in cases:
        value = _segment_value(case, segment, cohorts)
        recovery = booked.get((case.id, MovementKind.RECOVERY))
        churn = booked.get((case.id, MovementKind.CHURN_INVOLUNTARY))
        saved = 0
        if recovery is not None and case.subscription_id is not None:
            at_recovery = _mrr_at(session, case.subscription_id, recovery.occurred_at, as_of)
            saved = case.mrr if at_recovery is None else at_recovery
        for period in periods:
            if not period.start <= case.opened_at < period.end:
                continue
            key = (period, value, case.currency)
            row = totals.get(key)
            if row is None:
                row = totals[key] = RecoveryRow(
                    period.label, period.start, period.end, value, case.currency
                )
            row.at_risk_count += 1
            row.at_risk_amount += case.amount_due
            if recovery is not None:
                row.recovered_count += 1
                row.recovered_amount += recovery.amount
                tally = row.by_method.setdefault(recovery.method or "customer", [0, 0])
                tally[0] += 1
                tally[1] += recovery.amount
                row.mrr_saved += saved or 0
                waited = recovery.occurred_at - case.opened_at
                row.days_to_recover.append(Fraction(round(waited.total_seconds()), _DAY_SECONDS))
            if churn is not None:
                row.churned_count += 1
                row.churned_mrr += churn.amount
    return sorted(
        totals.values(), key=lambda r: (r.period_start, r.period_end, r.segment or "", r.currency)
    )


def _segment_value(case: Any, segment: str | None, cohorts: dict[int, str]) -> str | None:
    match segment:
        case "plan":
            return str(case.plan or "(no plan)")
        case "interval":
            return str(case.interval or "(none)")
        case "currency":
            return str(case.currency)
        case "cohort":
            return cohorts.get(case.customer_id, "(no MRR)")
    return None


def _booked(
    session: Session, case_ids: list[int], as_of: datetime
) -> dict[tuple[int, MovementKind], LedgerMovement]:
    found: dict[tuple[int, MovementKind], LedgerMovement] = {}
    for start in range(0, len(case_ids), 5_000):
        chunk = case_ids[start : start + 5_000]
        for movement in session.scalars(
            select(LedgerMovement).where(
                LedgerMovement.case_id.in_(chunk),
                LedgerMovement.kind.in_([MovementKind.RECOVERY, MovementKind.CHURN_INVOLUNTARY]),
                LedgerMovement.recorded_at <= as_of,
            )
        ):
            assert movement.case_id is not None  # noqa: S101 - selected by case_id
            found[(movement.case_id, movement.kind)] = movement
    return found


def _mrr_at(session: Session, subscription_id: int, at: datetime, as_of: datetime) -> int | None:
    change = session.scalars(
        select(MrrChange)
        .where(
            MrrChange.subscription_id == subscription_id,
            MrrChange.effective_at <= at,
            MrrChange.recorded_at <= as_of,
        )
        .order_by(MrrChange.effective_at.desc(), MrrChange.id.desc())
        .limit(1)
    ).first()
    if change is None:
        return None
    ended = change.discount_ends_at is not None and at >= change.discount_ends_at
    return (change.mrr_after_discount or 0) if ended else change.mrr


def _cohorts(session: Session, as_of: datetime) -> dict[int, str]:
    """Each customer's signup cohort: the month of their first MRR."""
    rows = session.execute(
        select(MrrChange.customer_id, func.min(MrrChange.effective_at))
        .where(MrrChange.mrr > 0, MrrChange.recorded_at <= as_of)
        .group_by(MrrChange.customer_id)
    )
    return {customer: f"{first:%Y-%m}" for customer, first in rows}
