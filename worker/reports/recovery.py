"""Recovery: dunning cases grouped by the period they opened in (metrics.md, "Recovery").

At risk: cases opened and their invoices' amount due. Recovered: cases whose recovery the
ledger booked by ``as_of``, with amount, method and time to recover. MRR saved: the MRR of
each recovered case's subscription when it recovered. Churned: involuntary churn booked for
cases of the period.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from fractions import Fraction
from itertools import groupby
from typing import Any

from sqlalchemy import case as when
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.billing.models import Invoice
from worker.dunning.models import DunningCase
from worker.ledger.models import (
    EndCause,
    LedgerMovement,
    MovementKind,
    MrrChange,
    RecoveryMethod,
)
from worker.ledger.movements import TICK, SubscriptionHistory, changes_as_of
from worker.ledger.periods import Period
from worker.reports.model import RecoveryRow

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
        )
        .join(Invoice, Invoice.id == DunningCase.invoice_id)
        .where(
            DunningCase.opened_at >= first,
            DunningCase.opened_at < last,
            DunningCase.opened_at <= as_of,
        )
        .order_by(DunningCase.opened_at, DunningCase.id)
    ).all()
    booked = _booked(session, [c.id for c in cases], as_of)
    histories = _histories(session, {c.subscription_id for c in cases}, as_of)
    cohorts = _cohorts(session, as_of) if segment == "cohort" else {}
    totals: dict[tuple[Period, str | None, str], RecoveryRow] = {}
    # A subscription's MRR counts once per period (and row), however many of its invoices
    # failed: a weekly plan can have several cases in one month.
    saved: set[tuple[Period, str | None, str, int]] = set()
    lost: set[tuple[Period, str | None, str, int]] = set()
    for case in cases:
        history = histories.get(case.subscription_id)
        value = _segment_value(case, segment, cohorts, history)
        recovery = booked.get((case.id, MovementKind.RECOVERY))
        churned = booked.get((case.id, MovementKind.CHURN_INVOLUNTARY)) is not None
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
                tally = row.by_method.setdefault(recovery.method or RecoveryMethod.CUSTOMER, [0, 0])
                tally[0] += 1
                tally[1] += recovery.amount
                if history is not None and _first(saved, (*key, case.subscription_id)):
                    row.mrr_saved += history.mrr_at(recovery.occurred_at)
                waited = max(recovery.occurred_at - case.opened_at, timedelta(0))
                row.days_to_recover.append(Fraction(round(waited.total_seconds()), _DAY_SECONDS))
            if churned:
                row.churned_count += 1
                if history is not None and _first(lost, (*key, case.subscription_id)):
                    row.churned_mrr += _lost_at_end(history, case.opened_at)
    return sorted(
        totals.values(), key=lambda r: (r.period_start, r.period_end, r.segment or "", r.currency)
    )


def _first(seen: set[tuple[Period, str | None, str, int]], key: Any) -> bool:
    """True the first time ``key`` is seen (and remembers it)."""
    if key in seen:
        return False
    seen.add(key)
    return True


def _histories(
    session: Session, subscription_ids: set[int | None], as_of: datetime
) -> dict[int, SubscriptionHistory]:
    """The MRR history, as known at ``as_of``, of the cases' subscriptions."""
    wanted = sorted(i for i in subscription_ids if i is not None)
    found: dict[int, SubscriptionHistory] = {}
    for start in range(0, len(wanted), 5_000):
        changes = changes_as_of(session, as_of, wanted[start : start + 5_000])
        for sub_id, group in groupby(changes, key=lambda c: c.subscription_id):
            found[sub_id] = SubscriptionHistory(list(group))
    return found


def _lost_at_end(history: SubscriptionHistory | None, since: datetime) -> int:
    """The MRR a churned case's subscription had when it ended for non-payment (after the
    case opened); 0 when it has not ended (``leave_past_due``, a refused cancellation):
    it still counts in MRR, so nothing was lost yet."""
    if history is None:
        return 0
    ends = [
        c.effective_at
        for c in history.rows
        if c.ended and c.end_cause is EndCause.INVOLUNTARY and c.effective_at >= since
    ]
    return history.mrr_at(min(ends) - TICK) if ends else 0


def _segment_value(
    case: Any, segment: str | None, cohorts: dict[int, str], history: SubscriptionHistory | None
) -> str | None:
    """The case's segment, from its subscription's state when the case opened."""
    state = history.at(case.opened_at) if history else None
    match segment:
        case "plan":
            return state.plan if state and state.plan else "(no plan)"
        case "interval":
            return state.interval if state and state.interval else "(none)"
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


def _cohorts(session: Session, as_of: datetime) -> dict[int, str]:
    """Each customer's signup cohort: the month of their first MRR (as the retention engine
    counts it: a fully discounted start counts from when the discount runs out)."""
    first_paid = when(
        (MrrChange.mrr > 0, MrrChange.effective_at),
        (MrrChange.mrr_after_discount > 0, MrrChange.discount_ends_at),
    )
    rows = session.execute(
        select(MrrChange.customer_id, func.min(first_paid))
        .where(MrrChange.recorded_at <= as_of, first_paid.is_not(None))
        .group_by(MrrChange.customer_id)
    )
    return {customer: f"{first:%Y-%m}" for customer, first in rows}
