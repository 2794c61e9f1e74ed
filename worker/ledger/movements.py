"""The MRR movement engine: from a customer's MRR history (``mrr_changes``) to their
movements per period, unit (segment value) and currency (shared/domain/metrics.md,
"Movements").

For each period [t0, t1) and each unit (customer, currency, segment value) with MRR0 at t0 and
MRR1 at t1: new / reactivation (MRR0 = 0 < MRR1; "reactivation" when the unit had MRR before
t0), expansion, contraction, churn. Contraction and churn are split by cause: the involuntary
part is min(loss, MRR0 of the unit's subscriptions that ended for non-payment in the period).

The monthly ledger (:mod:`worker.ledger.monthly`) stores one customer's monthly movements
(:func:`customer_months`); reports sum every customer's over any periods
(:func:`movement_totals`) or read a subscription's MRR at a time (:class:`SubscriptionHistory`).
History streams in customer order, so memory holds one customer at a time.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from itertools import groupby

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.ledger.models import EndCause, MrrChange, MrrMovementKind
from worker.ledger.periods import Period, periods

TICK = timedelta(microseconds=1)  # just before an instant: periods are half-open
COLUMNS = (
    MrrChange.customer_id,
    MrrChange.subscription_id,
    MrrChange.effective_at,
    MrrChange.mrr,
    MrrChange.discount_ends_at,
    MrrChange.mrr_after_discount,
    MrrChange.ended,
    MrrChange.end_cause,
    MrrChange.currency,
    MrrChange.plan,
    MrrChange.interval,
)


@dataclass(frozen=True, slots=True)
class Change:
    """One ``mrr_changes`` row, as the engine reads it."""

    customer_id: int
    subscription_id: int
    effective_at: datetime
    mrr: int
    discount_ends_at: datetime | None
    mrr_after_discount: int | None
    ended: bool
    end_cause: EndCause | None
    currency: str
    plan: str | None
    interval: str | None

    def mrr_at(self, at: datetime) -> int:
        if self.discount_ends_at is not None and at >= self.discount_ends_at:
            return self.mrr_after_discount or 0
        return self.mrr

    def positive_from(self) -> datetime | None:
        if self.mrr > 0:
            return self.effective_at
        if self.mrr_after_discount and self.discount_ends_at:
            return self.discount_ends_at
        return None


def changes_as_of(
    session: Session, as_of: datetime, subscription_ids: list[int] | None = None
) -> Iterator[Change]:
    """Every change recorded by ``as_of`` (of these subscriptions only, if given), by
    customer, subscription, effective time."""
    known = select(*COLUMNS).where(MrrChange.recorded_at <= as_of)
    if subscription_ids is not None:
        known = known.where(MrrChange.subscription_id.in_(subscription_ids))
    query = known.order_by(
        MrrChange.customer_id,
        MrrChange.subscription_id,
        MrrChange.effective_at,
        MrrChange.id,
    ).execution_options(yield_per=10_000)
    for row in session.execute(query):
        yield Change(*row)


@dataclass(kw_only=True)
class MrrAmounts:
    """Starting and ending MRR and the movements between them, in minor units (one field
    per :class:`~worker.ledger.models.MrrMovementKind`). Report rows carry the same fields."""

    starting_mrr: int = 0
    new: int = 0
    reactivation: int = 0
    expansion: int = 0
    contraction_voluntary: int = 0
    contraction_involuntary: int = 0
    churn_voluntary: int = 0
    churn_involuntary: int = 0
    ending_mrr: int = 0

    def amounts(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(MrrAmounts)}


@dataclass
class Movements(MrrAmounts):
    """MRR movements of one period x segment value x currency."""

    period: Period
    segment: str | None
    currency: str


_Totals = dict[tuple[Period, str | None, str], Movements]


def customer_months(changes: list[Change]) -> dict[tuple[datetime, str, str, str], int]:
    """One customer's movements per (month, currency, cohort, kind), every month from their
    first change to the last month anything is known to change (an event, a discount
    running out): the monthly ledger (:mod:`worker.ledger.monthly`) stores these."""
    ends = [c.effective_at for c in changes] + [
        c.discount_ends_at for c in changes if c.discount_ends_at is not None
    ]
    if not ends:
        return {}
    first = min(ends).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last = max(ends).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    totals: _Totals = {}
    _add_customer(totals, changes, periods(first, last, "month"), "cohort")
    found = {}
    for (period, cohort, currency), row in totals.items():
        for kind in MrrMovementKind:
            amount = getattr(row, kind.value)
            if amount:
                found[(period.start, currency, cohort or "", kind.value)] = amount
    return found


def movement_totals(
    changes: Iterable[Change], periods: list[Period], segment: str | None
) -> list[Movements]:
    """Sum the movements of every customer in ``changes`` (ordered by customer, then
    subscription and effective time) over ``periods``, per segment value and currency."""
    totals: _Totals = {}
    for _, rows in groupby(changes, key=lambda c: c.customer_id):
        _add_customer(totals, list(rows), periods, segment)
    return sorted(
        totals.values(),
        key=lambda m: (m.period.start, m.period.end, m.segment or "", m.currency),
    )


class SubscriptionHistory:
    """A subscription's rows, answering "what at time t" by bisection."""

    __slots__ = ("rows", "times")

    def __init__(self, rows: list[Change]) -> None:
        self.rows = rows
        self.times = [r.effective_at for r in rows]

    def at(self, t: datetime) -> Change | None:
        index = bisect.bisect_right(self.times, t)
        return self.rows[index - 1] if index else None

    def mrr_at(self, t: datetime) -> int:
        change = self.at(t)
        return 0 if change is None else change.mrr_at(t)

    def ended_involuntarily_in(self, t0: datetime, t1: datetime) -> bool:
        """Ended for non-payment inside [t0, t1) and still ended at t1."""
        last = self.at(t1 - TICK)
        if last is None or not last.ended:
            return False
        return any(
            r.ended and r.end_cause is EndCause.INVOLUNTARY and t0 <= r.effective_at < t1
            for r in self.rows
        )


def _add_customer(
    totals: _Totals,
    rows: list[Change],
    periods: list[Period],
    segment: str | None,
) -> None:
    subs = [
        SubscriptionHistory(list(group))
        for _, group in groupby(rows, key=lambda c: c.subscription_id)
    ]
    firsts = [t for r in rows if (t := r.positive_from()) is not None]
    if not firsts:
        return  # never paid anything: in no movement
    cohort = f"{min(firsts):%Y-%m}"

    def unit(change: Change) -> tuple[str | None, str]:
        match segment:
            case None:
                return None, change.currency
            case "plan":
                return change.plan or "(no plan)", change.currency
            case "interval":
                return change.interval or "(none)", change.currency
            case "currency":
                return change.currency, change.currency
            case _:
                return cohort, change.currency

    first_positive: dict[tuple[str | None, str], datetime] = {}
    for r in rows:
        start = r.positive_from()
        if start is not None:
            key = unit(r)
            first_positive[key] = min(first_positive.get(key, start), start)
    for period in periods:
        before: dict[tuple[str | None, str], int] = {}
        after: dict[tuple[str | None, str], int] = {}
        involuntary: dict[tuple[str | None, str], int] = {}
        for sub in subs:
            # Half-open periods: MRR0 is just before t0, MRR1 just before t1, so a change at
            # exactly t1 belongs to the next period (whose MRR0 is this one's MRR1).
            then = sub.at(period.start - TICK)
            if then is not None and (value := then.mrr_at(period.start - TICK)) > 0:
                key = unit(then)
                before[key] = before.get(key, 0) + value
                if sub.ended_involuntarily_in(period.start, period.end):
                    involuntary[key] = involuntary.get(key, 0) + value
            now = sub.at(period.end - TICK)
            if now is not None and (value := now.mrr_at(period.end - TICK)) > 0:
                key = unit(now)
                after[key] = after.get(key, 0) + value
        for key in before.keys() | after.keys():
            m0, m1 = before.get(key, 0), after.get(key, 0)
            row = totals.get((period, *key))
            if row is None:
                row = totals[(period, *key)] = Movements(period, key[0], key[1])
            _move(row, m0, m1, involuntary.get(key, 0), first_positive[key] < period.start)


def _move(row: Movements, m0: int, m1: int, involuntary_mrr0: int, had_mrr: bool) -> None:
    row.starting_mrr += m0
    row.ending_mrr += m1
    if m0 == 0:
        if had_mrr:
            row.reactivation += m1
        else:
            row.new += m1
    elif m1 > m0:
        row.expansion += m1 - m0
    elif m1 < m0:
        loss = m0 - m1
        lost_involuntarily = min(loss, involuntary_mrr0)
        if m1 == 0:
            row.churn_involuntary += lost_involuntarily
            row.churn_voluntary += loss - lost_involuntarily
        else:
            row.contraction_involuntary += lost_involuntarily
            row.contraction_voluntary += loss - lost_involuntarily
