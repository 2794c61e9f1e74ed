"""Retention: MRR movements summed per period x segment x currency, as of a time.

Any period kind or segment runs the ledger's movement engine over the MRR history
(:func:`worker.ledger.movements.movement_totals`); calendar months by currency or cohort read
the monthly ledger instead, one ``GROUP BY`` (:func:`monthly_rows`). A test checks both agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Text, func, literal, select
from sqlalchemy.orm import Session

from worker.ledger.models import MrrMovement
from worker.ledger.movements import Change, movement_totals
from worker.ledger.periods import Period
from worker.reports.model import RetentionRow


def retention_rows(
    changes: Iterable[Change], periods: list[Period], segment: str | None
) -> list[RetentionRow]:
    """Sum the movements of every customer in ``changes`` (ordered by customer, then
    subscription and effective time) over ``periods``."""
    return [RetentionRow.of(m) for m in movement_totals(changes, periods, segment)]


def monthly_rows(
    session: Session, spans: list[Period], segment: str | None, as_of: datetime
) -> list[RetentionRow]:
    """The same rows for calendar months, from the monthly ledger: one ``GROUP BY`` over
    ``mrr_movements`` as of ``as_of``, starting MRR being the sum of every earlier month.
    ``segment`` is None, "currency" or "cohort" (customer attributes the ledger carries)."""
    groups = [MrrMovement.month, MrrMovement.currency, MrrMovement.kind]
    if segment == "cohort":
        groups.append(MrrMovement.cohort)
    cohort = MrrMovement.cohort if segment == "cohort" else literal("", type_=Text)
    query = (
        select(
            MrrMovement.month,
            MrrMovement.currency,
            MrrMovement.kind,
            cohort,
            func.sum(MrrMovement.amount),
        )
        .where(MrrMovement.recorded_at <= as_of, MrrMovement.month < max(p.end for p in spans))
        .group_by(*groups)
    )
    net: dict[tuple[str | None, str], dict[datetime, dict[str, int]]] = {}
    for month, currency, kind, customer_cohort, amount in session.execute(query):
        value = customer_cohort if segment == "cohort" else None
        value = currency if segment == "currency" else value
        by_month = net.setdefault((value, currency), {})
        by_month.setdefault(month, {})[kind.value] = int(amount)
    wanted = {p.start: p for p in spans}
    rows = []
    for (value, currency), by_month in net.items():
        level = 0
        for month in sorted(by_month.keys() | wanted.keys()):
            kinds = by_month.get(month, {})
            row = RetentionRow("", month, month, value, currency, starting_mrr=level)
            for name, amount in kinds.items():
                setattr(row, name, amount)
            row.ending_mrr = level = row.cohort_ending + row.new + row.reactivation
            span = wanted.get(month)
            if span is not None and (row.starting_mrr or row.ending_mrr):
                row.period, row.period_end = span.label, span.end
                rows.append(row)
    return sorted(rows, key=lambda r: (r.period_start, r.segment or "", r.currency))
