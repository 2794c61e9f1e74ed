"""MRR of one subscription from the provider's facts (shared/domain/metrics.md, "MRR").

Pure functions, exact arithmetic: amounts are Decimal until the one half-even rounding at the
end. The rules:

* the sum over recurring *licensed* items of unit amount x quantity, normalised to a month
  (yearly / 12, weekly x 52 / 12, daily x 365 / 12, ``interval_count`` respected); metered
  items bill usage and are left out;
* net of the discounts active at the instant: ``forever``, or ``repeating`` before its end;
  ``once`` coupons are ignored; percentages apply first, then fixed amounts (a fixed amount
  is per billing period, so it is normalised like the items); never below zero;
* 0 while trialing or incomplete (nothing paid yet), paused (a trial ended without a
  payment method: nothing is billed) and once ended;
* ``past_due`` and ``unpaid`` still count: a subscription counts until it *ends*.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from worker.billing.domain import DiscountFacts, SubscriptionFacts

PER_MONTH = {
    "day": Decimal(365) / 12,
    "week": Decimal(52) / 12,
    "month": Decimal(1),
    "year": Decimal(1) / 12,
}
ENDED_STATUSES = frozenset({"canceled", "incomplete_expired"})
NOT_PAYING = frozenset({"trialing", "incomplete", "paused"})
MRR_RULE = "past_due and unpaid subscriptions count until they end"


@dataclass(frozen=True, slots=True)
class MrrState:
    """A subscription's MRR from one instant on, and the one change already known to come
    without an event: a repeating discount running out."""

    mrr: int
    ended: bool = False
    discount_ends_at: datetime | None = None
    mrr_after_discount: int | None = None  # from ``discount_ends_at`` on


def gross_monthly(facts: SubscriptionFacts) -> Decimal:
    """The licensed items' monthly amount before discounts, unrounded."""
    total = Decimal(0)
    for item in facts.items:
        if item.unit_amount is None or item.interval not in PER_MONTH:
            continue
        if item.usage_type == "metered":
            continue
        total += (
            Decimal(item.unit_amount)
            * item.quantity
            * _per_month(item.interval, item.interval_count)
        )
    return total


def monthly_amount(facts: SubscriptionFacts) -> int:
    """List-price MRR in minor units (no discounts, whatever the status)."""
    return _round(gross_monthly(facts))


def is_ended(facts: SubscriptionFacts, at: datetime) -> bool:
    return facts.status in ENDED_STATUSES or (facts.ended_at is not None and facts.ended_at <= at)


def state_at(facts: SubscriptionFacts, at: datetime) -> MrrState:
    """The subscription's MRR at ``at`` given its facts then."""
    if is_ended(facts, at):
        return MrrState(0, ended=True)
    if facts.status in NOT_PAYING:
        return MrrState(0)
    now = _net(facts, at)
    ends = sorted(
        d.end
        for d in facts.discounts
        if d.duration == "repeating" and d.end is not None and d.end > at
    )
    if not ends:
        return MrrState(now)
    return MrrState(now, discount_ends_at=ends[0], mrr_after_discount=_net(facts, ends[0]))


def _net(facts: SubscriptionFacts, at: datetime) -> int:
    gross = gross_monthly(facts)
    active = [d for d in facts.discounts if _active(d, at)]
    net = gross
    for discount in active:
        if discount.percent_off is not None:
            net -= gross * discount.percent_off / 100
    first = next((i for i in facts.items if i.interval in PER_MONTH), None)
    per_month = _per_month(first.interval, first.interval_count) if first else Decimal(1)
    for discount in active:
        same_currency = discount.currency in (None, facts.currency)
        if discount.amount_off is not None and same_currency:
            net -= Decimal(discount.amount_off) * per_month
    return max(_round(net), 0)


def _active(discount: DiscountFacts, at: datetime) -> bool:
    if discount.duration == "forever":
        return True
    return discount.duration == "repeating" and (discount.end is None or at < discount.end)


def _per_month(interval: str | None, count: int) -> Decimal:
    return PER_MONTH.get(interval or "month", Decimal(1)) / max(count, 1)


def _round(amount: Decimal) -> int:
    return int(amount.quantize(Decimal(1), rounding="ROUND_HALF_EVEN"))
