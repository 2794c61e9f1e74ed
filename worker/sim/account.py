"""The simulated Stripe account around the demo's live month: its past, and its ordinary changes.

The demo installs the worker on an account that has been billing for over a year. This module
plans that account (:func:`plan_account`) and plays its past on the peer, on the peer's clock,
before the worker exists (:func:`play_past`; no webhook endpoint yet, so none of it reaches the
worker as events): half the customers came with the account when it moved its billing to
Stripe, the others sign up month after month; all renew monthly; some buy an add-on
subscription (expansion) and some cancel it again (contraction); some cancel (voluntary churn)
and a few come back (reactivation); some renewals fail, and Stripe's own retries (Smart
Retries) collect them or run out, when Stripe ends the subscription for non-payment
(``cancellation_details.reason = "payment_failed"``: involuntary churn) and marks the invoice
uncollectible. Several currencies, as the population's places have them.

The past changes MRR only in ways Stripe's API keeps: subscriptions start and end (with the
reason), and invoices. That is what ``dunning backfill`` reads (customers, subscriptions with
``status=all``, invoices), from this account as from a real one. An in-place change of price or
seats before the installation could not be dated: Stripe keeps a subscription's current items
only, and its events for 30 days (worker/backfill/service.py, "Effective times"); proration
lines on invoices would date a change made with prorations, but not one made without, and the
backfill does not read them. So in-place seat changes happen in the live month only, where
their events reach the worker. Saved cards
other than the default are not backfilled either, so the demo's backup cards are saved as the
live month starts.

The live month's ordinary changes (:class:`Change`) are made by customers who pay on time:
sign-ups, cancellations, add-ons bought and cancelled, seat counts up and down. The dunning
stories of the live month are :mod:`worker.sim.population`'s.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from worker.clock import ManualClock
from worker.sim.driver import Timeline
from worker.sim.population import NAMES, PLACES, PRICES, Customer
from worker.sim.stripe_objects import add_interval
from worker.sim.stripe_peer import (
    DO_NOT_HONOR,
    EXPIRED_CARD,
    INSUFFICIENT_FUNDS,
    PROCESSING_ERROR,
    SUCCEED,
    Decline,
    StripePeer,
)

# The first customers signed up this many months before the live month: twelve full months of
# history, and a starting MRR in the first of them.
EARLIEST = 13
# The share of customers who came with the account when it moved its billing to Stripe (their
# subscriptions start in its first month): the year's NRR then measures a real cohort, and
# its churn, involuntary included, is part of the year's story.
FOUNDERS = 0.5
# Stripe's own retries of a failed renewal in the past, after the failure (an illustration of
# Smart Retries; the account's setting ends the subscription when the last one fails).
PROVIDER_RETRIES = (timedelta(days=3), timedelta(days=5), timedelta(days=7))
TIERS = ("Starter", "Pro", "Team", "Business", "Scale")  # by price, per currency
ADDON_PRICES = {
    "usd": [1500, 4900],
    "gbp": [1200, 3900],
    "eur": [1500, 4500],
    "jpy": [1500, 5000],
    "brl": [1990, 4990],
}
PAST_DECLINES = (INSUFFICIENT_FUNDS, DO_NOT_HONOR, PROCESSING_ERROR)
LOST_DECLINES = (INSUFFICIENT_FUNDS, EXPIRED_CARD, DO_NOT_HONOR)
ON_TIME = "paid on time"


@dataclass(frozen=True)
class PastFailure:
    renewal: int  # the monthly renewal that failed (1: the first after the start)
    decline: Decline
    paid_on_retry: int | None  # Stripe's retry that collected it; None: the retries ran out


@dataclass
class Plan:
    """One subscription of a member."""

    label: str  # main | addon | return (a former customer's new subscription)
    product: str
    amount: int
    start: datetime
    quantity: int = 1
    end: datetime | None = None  # the customer cancelled it
    failure: PastFailure | None = None


@dataclass
class Member:
    person: Customer
    plans: list[Plan]
    live: bool  # one of the live month's dunning population

    @property
    def joined(self) -> datetime:
        return min(plan.start for plan in self.plans)


Fate = Literal["lost", "cancelled", "returned"]  # of a customer who left before the live month
ChangeKind = Literal["signup", "cancel", "buy_addon", "cancel_addon", "seats"]


@dataclass(frozen=True)
class Change:
    """An ordinary change in the live month."""

    at: datetime
    kind: ChangeKind
    email: str
    amount: int = 0  # buy_addon: the add-on's price
    quantity: int = 0  # seats: the new count


@dataclass
class Account:
    live_start: datetime
    members: list[Member]  # everyone with a subscription before the live month
    newcomers: list[Customer]  # who sign up in the live month (Change "signup")
    changes: list[Change]

    @property
    def first_month(self) -> datetime:
        return min(member.joined for member in self.members)


@dataclass
class Ids:
    """A member's Stripe ids, once played."""

    customer: str
    subs: dict[str, str] = field(default_factory=dict)  # plan label -> subscription id


def months(when: datetime, count: int) -> datetime:
    """``when`` plus ``count`` calendar months (negative: before), as Stripe bills them."""
    return datetime.fromtimestamp(add_interval(int(when.timestamp()), "month", count), tz=UTC)


def _at(when: datetime) -> datetime:
    return when.replace(microsecond=0)


def plan_account(population: list[Customer], *, seed: int, live_start: datetime) -> Account:
    """The account whose live month ``population`` renews in: ``population`` with a past,
    former customers, and the live month's ordinary changes. Its own random stream: the
    population's stories stay those of :func:`~worker.sim.population.make_population`."""
    rng = random.Random(f"account-{seed}")
    members = [
        _live_member(rng, person, live_start, tenure=EARLIEST if i == 0 else None)
        for i, person in enumerate(population)
    ]
    former = max(3, len(population) // 6)
    for j in range(former):
        # Two in five lost to failed payments; of those who cancelled, the first two return.
        fate: Fate = "lost" if j % 5 in {1, 3} else "returned" if j in {0, 2} else "cancelled"
        members.append(_former_member(rng, _person(rng, len(population) + j), live_start, fate))
    newcomers = [
        _person(rng, len(population) + former + k) for k in range(max(2, len(population) // 20))
    ]
    return Account(
        live_start=live_start,
        members=members,
        newcomers=newcomers,
        changes=_changes(rng, members, newcomers, live_start),
    )


def _person(rng: random.Random, index: int) -> Customer:
    """A customer outside the dunning population: pays on time."""
    locale, zone, currency = rng.choice(PLACES)
    return Customer(
        name=f"{NAMES[index % len(NAMES)]} {chr(65 + (index // len(NAMES)) % 26)}.",
        email=f"customer{index:03d}@example.com",
        locale=locale,
        timezone=zone,
        currency=currency,
        amount=rng.choice(PRICES[currency]),
        bill_after=timedelta(days=rng.uniform(0, 20)),
        story=ON_TIME,
        outcomes=[SUCCEED],
    )


def tier(person: Customer) -> str:
    """The product a customer's price is the plan of."""
    return TIERS[PRICES[person.currency].index(person.amount)]


def _live_member(
    rng: random.Random, person: Customer, live_start: datetime, *, tenure: int | None
) -> Member:
    """The main subscription renews in the live month at ``bill_after``, its ``tenure``-th
    renewal; a past add-on, or a past failure Stripe's retries collected, for some."""
    renews = _at(live_start + person.bill_after)
    tenure = tenure or _tenure(rng, least=1)
    start = months(renews, -tenure)
    on_time = person.story == ON_TIME
    main = Plan("main", tier(person), person.amount, start)
    if on_time and main.product in TIERS[2:] and rng.random() < 0.4:
        main.quantity = rng.randint(2, 5)  # seats
    plans = [main]
    if tenure >= 3 and rng.random() < (0.4 if on_time else 0.1):
        bought = rng.randint(1, tenure - 2)
        addon = Plan(
            "addon", "Add-on", rng.choice(ADDON_PRICES[person.currency]), months(start, bought)
        )
        # Only customers who pay on time keep theirs into the live month: it renews with the
        # main subscription, on the same card.
        if not on_time or rng.random() < 0.3:
            dropped = rng.randint(bought + 1, tenure - 1)
            addon.end = _at(months(start, dropped) + timedelta(days=rng.uniform(0.5, 9)))
        plans.append(addon)
    elif tenure >= 3 and rng.random() < 0.25:
        main.failure = PastFailure(
            renewal=rng.randint(1, tenure - 2),
            decline=rng.choice(PAST_DECLINES),
            paid_on_retry=rng.randint(1, len(PROVIDER_RETRIES)),
        )
    return Member(person, plans, live=True)


def _tenure(rng: random.Random, *, least: int) -> int:
    """Months before the live month a customer signed up: a founder, or any month since."""
    return EARLIEST if rng.random() < FOUNDERS else rng.randint(least, EARLIEST - 1)


def _former_member(
    rng: random.Random, person: Customer, live_start: datetime, fate: Fate
) -> Member:
    """A customer who left before the live month: lost when Stripe's retries ran out, or
    cancelled (and, ``returned``, subscribed again two months later)."""
    tenure = _tenure(rng, least=5)
    start = months(_at(live_start + person.bill_after), -tenure)
    # The renewal it failed at, or the month it cancelled in (room to come back before live).
    left = rng.randint(2, tenure - (3 if fate == "returned" else 1))
    main = Plan("main", tier(person), person.amount, start)
    story = {"lost": "lost to failed payments", "returned": "cancelled, came back"}
    if fate == "lost":
        main.failure = PastFailure(left, rng.choice(LOST_DECLINES), paid_on_retry=None)
        return Member(replace(person, story=story[fate]), [main], live=False)
    main.end = _at(months(start, left) + timedelta(days=rng.uniform(0.5, 6)))
    plans = [main]
    if fate == "returned":
        plans.append(Plan("return", main.product, main.amount, months(start, left + 2)))
    return Member(replace(person, story=story.get(fate, "cancelled")), plans, live=False)


def _changes(
    rng: random.Random, members: list[Member], newcomers: list[Customer], live_start: datetime
) -> list[Change]:
    """Ordinary changes in the live month, by distinct customers who pay on time. Cancelling
    takes effect at the end of the paid period (Stripe's ``cancel_at_period_end``): the renewal
    moment, instead of the renewal."""

    def some_day() -> datetime:
        return _at(live_start + timedelta(days=rng.uniform(0.5, 28)))

    def period_end(m: Member) -> datetime:
        return months(m.plans[0].start, _renewals_before(m.plans[0].start, live_start) + 1)

    count = sum(m.live for m in members)
    on_time = [m for m in members if m.live and m.person.story == ON_TIME]
    rng.shuffle(on_time)
    changes = [Change(some_day(), "signup", person.email) for person in newcomers]

    def take(wanted: int, fits: Callable[[Member], bool]) -> list[Member]:
        found = [m for m in on_time if fits(m)][:wanted]
        for m in found:
            on_time.remove(m)
        return found

    def has_addon(m: Member) -> bool:
        return any(p.label == "addon" and p.end is None for p in m.plans)

    for m in take(max(1, count // 50), lambda m: len(m.plans) == 1 and m.plans[0].quantity == 1):
        changes.append(Change(period_end(m), "cancel", m.person.email))
    for m in take(max(1, count // 40), has_addon):
        changes.append(Change(period_end(m), "cancel_addon", m.person.email))
    for m in take(max(1, count // 25), lambda m: not has_addon(m)):
        price = rng.choice(ADDON_PRICES[m.person.currency])
        changes.append(Change(some_day(), "buy_addon", m.person.email, amount=price))
    for m in take(max(1, count // 25), lambda m: m.plans[0].product in TIERS[2:]):
        seats = m.plans[0].quantity
        fewer = seats > 1 and rng.random() < 0.5
        changes.append(
            Change(some_day(), "seats", m.person.email, quantity=seats + (-1 if fewer else 1))
        )
    return sorted(changes, key=lambda c: c.at)


def _renewals_before(start: datetime, moment: datetime) -> int:
    """How many monthly renewals a subscription started at ``start`` has had by ``moment``."""
    count = 0
    while months(start, count + 1) < moment:
        count += 1
    return count


# ------------------------------------------------------------------------------------ playing


def play_past(peer: StripePeer, manual: ManualClock, account: Account) -> dict[str, Ids]:
    """Play the account's past on ``peer``, moving ``manual`` through it: everything before the
    live start. The Stripe ids of every member, by email."""
    timeline = Timeline()
    ids: dict[str, Ids] = {}
    for member in account.members:
        timeline.at(member.joined, _join(peer, member, ids))
        for plan in member.plans:
            player = _PlanPlayer(peer, timeline, ids, member, plan, account.live_start)
            timeline.at(plan.start, player.start)
            if plan.end is not None:
                timeline.at(plan.end, player.cancel)
    while (when := timeline.next_time()) is not None:
        if when >= account.live_start:
            raise ValueError(f"the past reaches into the live month: {when:%Y-%m-%d %H:%M}")
        manual.set(when)
        timeline.run_due(when)
    return ids


def _join(peer: StripePeer, member: Member, ids: dict[str, Ids]) -> Callable[[], None]:
    def join() -> None:
        person = member.person
        cus = peer.create_customer(
            email=person.email,
            name=person.name,
            card=replace(person.card, outcomes=[SUCCEED]),  # the live script starts live
            timezone=person.timezone,
            locale=person.locale,
        )
        ids[person.email] = Ids(cus)

    return join


@dataclass
class _PlanPlayer:
    """One subscription's past: its start, its monthly renewals (a failure with Stripe's
    retries among them), its cancellation."""

    peer: StripePeer
    timeline: Timeline
    ids: dict[str, Ids]
    member: Member
    plan: Plan
    live_start: datetime

    @property
    def _ids(self) -> Ids:
        return self.ids[self.member.person.email]

    @property
    def _sub(self) -> str:
        return self._ids.subs[self.plan.label]

    def start(self) -> None:
        person = self.member.person
        self._ids.subs[self.plan.label] = self.peer.create_subscription(
            customer_id=self._ids.customer,
            unit_amount=self.plan.amount,
            currency=person.currency,
            quantity=self.plan.quantity,
            product_name=self.plan.product,
        )
        self._plan_renewal(1)

    def cancel(self) -> None:
        if self.peer.next_renewal(self._sub) is not None:
            self.peer.cancel_subscription(self._sub)

    def _plan_renewal(self, number: int) -> None:
        when = months(self.plan.start, number)
        if when < self.live_start and (self.plan.end is None or when < self.plan.end):
            self.timeline.at(when, lambda: self._renew(number, when))

    def _renew(self, number: int, when: datetime) -> None:
        if self.peer.next_renewal(self._sub) is None:
            return  # ended
        failure = self.plan.failure
        if failure is not None and failure.renewal == number:
            # Declined until the retry that collects it; declined for good when none does.
            script: list[Decline | str] = [failure.decline] * (failure.paid_on_retry or 1)
            if failure.paid_on_retry:
                script.append(SUCCEED)
            self.peer.script_card(self._ids.customer, script)
        invoice, paid = self.peer.bill(self._sub)
        if not paid:
            for n, after in enumerate(PROVIDER_RETRIES, 1):
                self.timeline.at(
                    when + after, self._retry(invoice, last=n == len(PROVIDER_RETRIES))
                )
        self._plan_renewal(number + 1)

    def _retry(self, invoice: str, *, last: bool) -> Callable[[], None]:
        def retry() -> None:
            if self.peer.invoice(invoice)["status"] != "open" or self.peer.provider_retry(invoice):
                return
            if last:  # the account's setting when Stripe's retries run out
                self.peer.cancel_subscription(self._sub, reason="payment_failed")
                self.peer.mark_uncollectible(invoice)

        return retry
