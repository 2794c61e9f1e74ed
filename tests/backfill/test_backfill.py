"""``dunning backfill`` against the Stripe-compatible peer over loopback HTTP (through the
official ``stripe`` library) and a real database: what it records, pagination, resuming after
an interruption, rate limits, and a re-run that adds nothing."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tests.support.processes import clean_env, dunning
from worker.backfill.models import BackfillCursor, BackfillResource
from worker.backfill.service import BackfillSummary, backfill_states, run_backfill
from worker.billing.domain import SubscriptionFacts
from worker.billing.models import Customer, Invoice, Subscription
from worker.billing.normalise import normalise_stripe_event
from worker.billing.ratelimit import RateLimiter
from worker.billing.stripe_client import ProviderError
from worker.clock import ManualClock
from worker.config import Policy
from worker.db import make_engine, make_sessionmaker
from worker.dunning.models import DunningCase, ScheduledAction
from worker.email.models import Notification
from worker.ledger.models import EndCause, LedgerMovement, MrrChange
from worker.models import Base
from worker.runtime import Runtime
from worker.settings import Secret, SettingError, Settings
from worker.sim.stripe_peer import INSUFFICIENT_FUNDS, SUCCEED, CardSpec, CouponSpec, StripePeer
from worker.webhooks.handlers import Context, handle

API_KEY = "sk_test_backfill"
T0 = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)  # the account opens
BILLED = T0 + timedelta(days=60)
CANCELED = T0 + timedelta(days=90)
NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # the backfill runs
FAST = 2000.0  # requests/s where the limiter is not under test
FILLER = 240  # plain subscriptions besides the named ones: 249 of each resource, 3 pages
CUSTOMERS_N = FILLER + 9
INVOLUNTARY, VOLUNTARY = EndCause.INVOLUNTARY, EndCause.VOLUNTARY
CUS, SUB, INV = (
    BackfillResource.CUSTOMERS,
    BackfillResource.SUBSCRIPTIONS,
    BackfillResource.INVOICES,
)


@dataclass
class Account:
    peer: StripePeer
    clock: ManualClock  # the peer's
    url: str
    subs: dict[str, str]  # name -> subscription id
    created: dict[str, datetime]  # name -> when created
    invoices: int
    broken: str  # a subscription the parser cannot read


def _populate(peer: StripePeer, clock: ManualClock) -> Account:
    """Named subscriptions with known histories, then plain ones, one every three hours."""
    named: dict[str, dict[str, Any]] = {
        "plain": {"unit_amount": 2900},
        "yearly": {"unit_amount": 12000, "interval": "year"},
        "forever_20": {"unit_amount": 5000, "coupon": CouponSpec(percent_off=20)},
        "repeating_50": {
            "unit_amount": 4000,
            "coupon": CouponSpec(percent_off=50, duration="repeating", duration_in_months=3),
        },
        "trialing": {"unit_amount": 1500, "trial_days": 14},
        "converted": {"unit_amount": 2500, "trial_days": 14},
        "churned_involuntary": {"unit_amount": 3000},
        "churned_voluntary": {"unit_amount": 3500},
        "ended_in_trial": {"unit_amount": 2000, "trial_days": 30},
    }
    specs = list(named.items()) + [
        (f"filler_{i}", {"unit_amount": 1000 + 10 * i}) for i in range(FILLER)
    ]
    subs, created = {}, {}
    for n, (name, spec) in enumerate(specs):
        clock.set(T0 + timedelta(hours=3 * n))
        declines = name.startswith("filler_") and n % 6 == 0
        card = CardSpec(outcomes=[INSUFFICIENT_FUNDS] if declines else [SUCCEED])
        customer = peer.create_customer(email=f"c{n}@example.test", name=f"C {n}", card=card)
        subs[name] = peer.create_subscription(customer_id=customer, **spec)
        created[name] = clock.now()
    clock.set(created["ended_in_trial"] + timedelta(days=5))
    peer.cancel_subscription(subs["ended_in_trial"])
    clock.set(BILLED)
    billed = [name for name in subs if name not in {"trialing", "ended_in_trial"}]
    for name in billed:
        peer.bill(subs[name])
    clock.set(CANCELED)
    peer.cancel_subscription(subs["churned_involuntary"], reason="payment_failed")
    peer.cancel_subscription(subs["churned_voluntary"], reason="cancellation_requested")
    broken = subs["filler_7"]  # no control call makes a malformed object: reach in
    peer._objs[broken]["items"]["data"][0]["price"]["unit_amount"] = "12"  # a string
    return Account(peer, clock, "", subs, created, len(billed), broken)


@pytest.fixture
def account() -> Iterator[Account]:
    clock = ManualClock(T0)
    peer = StripePeer(api_key=API_KEY, clock=clock.now)
    populated = _populate(peer, clock)
    with peer.serve() as url:
        populated.url = url
        yield populated


def backfill(db_url: str, account: Account, **options: Any) -> BackfillSummary:
    settings = Settings(
        database_url=db_url, stripe_api_key=Secret(API_KEY), stripe_api_base=account.url
    )
    runtime = Runtime(settings)
    options = {"since": None, "progress": False, "requests_per_second": FAST, **options}
    try:
        return run_backfill(runtime, now=NOW, **options)
    finally:
        runtime.close()


@contextmanager
def open_session(db_url: str) -> Iterator[Session]:
    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as session:
            yield session
    finally:
        engine.dispose()


def history(session: Session, sub_id: str) -> list[tuple[Any, ...]]:
    """A subscription's MRR rows: (source suffix, effective_at, mrr, ended, end cause)."""
    rows = session.execute(
        select(
            MrrChange.source,
            MrrChange.effective_at,
            MrrChange.mrr,
            MrrChange.ended,
            MrrChange.end_cause,
        )
        .join(Subscription, Subscription.id == MrrChange.subscription_id)
        .where(Subscription.provider_id == sub_id)
        .order_by(MrrChange.effective_at, MrrChange.id)
    )
    return [(source.removeprefix(f"backfill:{sub_id}:"), *rest) for source, *rest in rows]


def snapshot(db_url: str) -> tuple[list[tuple[Any, ...]], dict[str, int]]:
    """What a backfill leaves behind, comparable across databases (no surrogate ids)."""
    with open_session(db_url) as session:
        rows = session.execute(
            select(
                Subscription.provider_id,
                MrrChange.source,
                MrrChange.effective_at,
                MrrChange.mrr,
                MrrChange.ended,
                MrrChange.end_cause,
                MrrChange.discount_ends_at,
                MrrChange.mrr_after_discount,
            ).join(Subscription, Subscription.id == MrrChange.subscription_id)
        )
        counts = {
            model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
            for model in (Customer, Subscription, Invoice, MrrChange)
        }
        return sorted(tuple(r) for r in rows), counts


def empty(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.begin() as conn:
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


def requests_to(account: Account, path: str) -> list[Any]:
    return [r for r in account.peer.requests if r.path == path]


# --------------------------------------------------------------------------------- a full run


def test_backfill_mirrors_the_account_and_rebuilds_mrr_history(
    db_url: str, account: Account
) -> None:
    summary = backfill(db_url, account, progress=True)

    assert {r: (s.objects, s.pages) for r, s in summary.resources.items()} == {
        CUS: (CUSTOMERS_N, 3),
        SUB: (CUSTOMERS_N, 3),
        INV: (account.invoices, 3),
    }
    assert summary.resources[SUB].skipped == 1  # the unreadable one, logged and left out
    assert not summary.resumed
    expected_rows = (FILLER - 1) + 13  # one per plain subscription, 13 for the named ones
    assert summary.mrr_changes == expected_rows
    _, counts = snapshot(db_url)
    assert counts == {
        "customers": CUSTOMERS_N,
        "subscriptions": CUSTOMERS_N,  # the unreadable one too: its invoice names it
        "invoices": account.invoices,
        "mrr_changes": expected_rows,
    }
    created, subs = account.created, account.subs
    with open_session(db_url) as session:
        assert history(session, subs["plain"]) == [("start", created["plain"], 2900, False, None)]
        assert history(session, subs["yearly"]) == [("start", created["yearly"], 1000, False, None)]
        assert history(session, subs["forever_20"])[0][2] == 4000
        assert history(session, subs["trialing"]) == [
            ("start", created["trialing"], 0, False, None)
        ]
        assert history(session, subs["converted"]) == [
            ("start", created["converted"], 0, False, None),
            ("trial-end", created["converted"] + timedelta(days=14), 2500, False, None),
        ]
        assert history(session, subs["churned_involuntary"]) == [
            ("start", created["churned_involuntary"], 3000, False, None),
            ("end", CANCELED, 0, True, INVOLUNTARY),
        ]
        assert history(session, subs["churned_voluntary"]) == [
            ("start", created["churned_voluntary"], 3500, False, None),
            ("end", CANCELED, 0, True, VOLUNTARY),
        ]
        assert history(session, subs["ended_in_trial"]) == [
            ("start", created["ended_in_trial"], 0, False, None),
            ("end", created["ended_in_trial"] + timedelta(days=5), 0, True, VOLUNTARY),
        ]
        repeating = session.scalars(
            select(MrrChange)
            .join(Subscription)
            .where(Subscription.provider_id == subs["repeating_50"])
        ).one()
        start = created["repeating_50"]
        assert (repeating.mrr, repeating.mrr_after_discount) == (2000, 4000)
        assert repeating.discount_ends_at == start.replace(month=start.month + 3)
        assert history(session, account.broken) == []
        past_due = session.scalar(select(func.count()).where(Subscription.status == "past_due"))
        assert past_due == len([n for n in range(9, CUSTOMERS_N) if n % 6 == 0])
        open_invoices = session.scalar(select(func.count()).where(Invoice.status == "open"))
        assert open_invoices == past_due
        # Mirrored, never acted on: no case, action, email or ledger movement.
        for model in (DunningCase, ScheduledAction, Notification, LedgerMovement):
            assert session.scalar(select(func.count()).select_from(model)) == 0
    assert {r.method for r in account.peer.requests} == {"GET"}
    listing = requests_to(account, "/v1/subscriptions")[0].params
    assert listing["status"] == "all"
    assert listing["expand"] == ["data.discounts.source.coupon"]
    assert summary.lines()[1:] == [
        f"  customers: {CUSTOMERS_N} in 3 page(s), 0 skipped",
        f"  subscriptions: {CUSTOMERS_N} in 3 page(s), 1 skipped",
        f"  invoices: {account.invoices} in 3 page(s), 0 skipped",
    ]


def test_a_second_run_adds_nothing(pg: str, account: Account) -> None:
    first = backfill(pg, account)
    before = snapshot(pg)
    second = backfill(pg, account)

    assert not second.resumed  # the first run finished: this one lists everything again
    assert second.resources[INV].objects == first.resources[INV].objects
    assert second.mrr_changes == 0
    assert snapshot(pg) == before


# ----------------------------------------------------------------------- interrupt and resume


@contextmanager
def refusing(pg: str, source: str) -> Iterator[None]:
    """PostgreSQL refuses to insert the MRR row with this source: the transaction that tries
    rolls back, whatever else it wrote."""
    dsn = pg.replace("+psycopg", "")
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" IF NEW.source = '{source}' THEN RAISE 'interrupted'; END IF; RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON mrr_changes"
            " FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    try:
        yield
    finally:
        with psycopg.connect(dsn) as conn:
            conn.execute("DROP TRIGGER refuse ON mrr_changes")
            conn.execute("DROP FUNCTION refuse()")


@pytest.mark.parametrize("where", ["provider", "database"])
def test_an_interrupted_run_resumes_and_ends_like_an_uninterrupted_one(
    pg: str, account: Account, where: str
) -> None:
    backfill(pg, account)
    uninterrupted = snapshot(pg)
    empty(pg)
    if where == "provider":  # fetching the second page of subscriptions fails for good
        account.peer.inject_fault(
            method="GET", path_prefix="/v1/subscriptions", status=500, should_retry=False, after=1
        )
        with pytest.raises(ProviderError):
            backfill(pg, account)
    else:  # mid-way through writing it (listed newest first: filler_91 is on page 2)
        victim = account.subs["filler_91"]
        with refusing(pg, f"backfill:{victim}:start"), pytest.raises(DBAPIError, match="interr"):
            backfill(pg, account)
    with open_session(pg) as session:
        cursors = {c.resource: c for c in session.scalars(select(BackfillCursor))}
        first_page_last = cursors[SUB].last_id
        assert cursors[CUS].finished
        assert (cursors[SUB].finished, cursors[SUB].pages, cursors[INV].pages) == (False, 1, 0)
        committed = session.scalar(select(func.count()).select_from(MrrChange))
    assert 0 < committed < uninterrupted[1]["mrr_changes"]
    account.peer.requests.clear()

    resumed = backfill(pg, account)

    assert resumed.resumed
    assert resumed.resources[CUS].done_before
    assert resumed.resources[SUB].resumed_after == first_page_last
    assert (resumed.resources[SUB].pages, resumed.resources[INV].pages) == (2, 3)
    assert requests_to(account, "/v1/customers") == []
    assert requests_to(account, "/v1/subscriptions")[0].params["starting_after"] == first_page_last
    assert committed + resumed.mrr_changes == uninterrupted[1]["mrr_changes"]
    assert snapshot(pg) == uninterrupted
    assert "(resumed after" in resumed.lines()[2]


# ----------------------------------------------------------------------------- rate limits


def test_one_object_that_fails_does_not_stop_the_run(db_url: str, account: Account) -> None:
    """An invoice whose amount no database column holds is skipped alone, with the reason
    (the reader refuses it before any write): every other object of its page and of the
    pages after it is mirrored, and the summary counts it."""
    invoices = sorted(o["id"] for o in account.peer._objs.values() if o["object"] == "invoice")
    huge = invoices[len(invoices) // 2]
    account.peer._objs[huge]["amount_due"] = 10**30  # no control call makes one: reach in

    summary = backfill(db_url, account)

    assert summary.resources[INV].skipped == 1
    assert summary.resources[INV].objects == account.invoices
    assert any(line.endswith(", 1 skipped") for line in summary.lines())
    _, counts = snapshot(db_url)
    assert counts["invoices"] == account.invoices - 1
    with open_session(db_url) as session:
        assert session.scalar(select(Invoice).where(Invoice.provider_id == huge)) is None


def test_429_is_retried_after_retry_after(pg: str, account: Account) -> None:
    account.peer.inject_fault(
        method="GET", path_prefix="/v1/invoices", status=429, times=2, retry_after=0.3
    )

    summary = backfill(pg, account)

    calls = requests_to(account, "/v1/invoices")
    assert [r.status for r in calls] == [429, 429, 200, 200, 200]
    assert summary.resources[INV].pages == 3
    assert calls[1].at - calls[0].at >= 0.3
    assert calls[2].at - calls[1].at >= 0.3
    assert snapshot(pg)[1]["invoices"] == account.invoices


def test_retries_wait_their_turn_at_the_limiter(pg: str, account: Account) -> None:
    """Retry-After 0 asks for no wait; 5 requests/s still spaces the retries 0.2 s apart."""
    account.peer.inject_fault(
        method="GET", path_prefix="/v1/customers", status=429, times=3, retry_after=0
    )

    backfill(pg, account, requests_per_second=5)

    calls = requests_to(account, "/v1/customers")
    assert [r.status for r in calls[:4]] == [429, 429, 429, 200]
    gaps = [b.at - a.at for a, b in itertools.pairwise(calls[:4])]
    assert min(gaps) >= 0.18  # 1/5 s, less the jitter of answering


def test_rate_limiter_spaces_calls_without_delaying_late_ones() -> None:
    now, slept = [100.0], []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(4, monotonic=lambda: now[0], sleep=sleep)
    for _ in range(3):
        limiter.wait()
    now[0] += 1.0  # an idle second: the next call goes at once
    limiter.wait()
    assert slept == [0.25, 0.25]
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0)


# ------------------------------------------------------------------------------------ since


def test_since_limits_customers_and_invoices_but_not_live_subscriptions(
    pg: str, account: Account
) -> None:
    since = T0 + timedelta(days=20)
    account.peer.inject_fault(
        method="GET", path_prefix="/v1/customers", status=500, should_retry=False, after=1
    )
    with pytest.raises(ProviderError):
        backfill(pg, account)  # an interrupted run over everything...

    summary = backfill(pg, account, since=since)

    assert not summary.resumed  # ...is not resumed by a run with another since
    newer = [t for t in account.created.values() if t >= since]
    assert summary.resources[CUS].objects == len(newer)
    assert summary.resources[SUB].objects == CUSTOMERS_N  # every subscription is looked at
    assert summary.resources[SUB].skipped == 2  # unreadable, and ended before since
    assert summary.resources[INV].objects == account.invoices  # all billed after since
    gte = {"gte": str(int(since.timestamp()))}
    assert requests_to(account, "/v1/customers")[-1].params["created"] == gte
    assert requests_to(account, "/v1/invoices")[-1].params["created"] == gte
    with open_session(pg) as session:
        assert history(session, account.subs["ended_in_trial"]) == []
        assert history(session, account.subs["plain"])[0][1] == account.created["plain"]


# ----------------------------------------------------------------- real events come first


def replay(pg: str, policy: Policy, peer: StripePeer, wanted: dict[str, set[str]]) -> None:
    """Process the peer's events ``customer.subscription.<kind>`` for the wanted subscriptions
    as the webhook pipeline would, in order."""
    with open_session(pg) as session:
        for event in peer.events:
            kind = event["type"].removeprefix("customer.subscription.")
            if kind in wanted.get(event["data"]["object"]["id"], set()):
                handle(session, normalise_stripe_event(event), Context(policy=policy, now=NOW))
        session.commit()


def test_rows_from_real_events_are_not_contradicted(
    pg: str, policy: Policy, account: Account
) -> None:
    """``seen`` was created and deleted while we listened: nothing to add. ``late`` was created
    before, updated on billing day, and its deletion missed: its start goes before that update,
    and its end is added. ``early`` converted, per an event, ten days into a 30-day trial: no
    backfilled state at its (stale) trial end overrides that."""
    peer, clock = account.peer, account.clock
    clock.set(NOW - timedelta(days=40))
    customer = peer.create_customer(email="s@example.test", name="S", card=CardSpec())
    seen = peer.create_subscription(customer_id=customer, unit_amount=999)
    early = peer.create_subscription(customer_id=customer, unit_amount=700, trial_days=30)
    clock.advance(timedelta(days=10))
    peer.bill(early)
    peer.cancel_subscription(seen)
    late = account.subs["churned_voluntary"]
    replay(pg, policy, peer, {seen: {"created", "deleted"}, late: {"updated"}, early: {"updated"}})

    backfill(pg, account)

    def labels(sub_id: str) -> list[str]:
        with open_session(pg) as session:
            rows = history(session, sub_id)
        return ["event" if row[0].startswith("evt_") else row[0] for row in rows]

    assert labels(seen) == ["event", "event"]
    assert labels(late) == ["start", "event", "end"]
    assert labels(early) == ["start", "event"]


def test_backfill_states_of_an_expired_incomplete_subscription() -> None:
    start, end = T0, T0 + timedelta(days=1)
    facts = SubscriptionFacts(
        id="sub_x",
        customer_id="cus_x",
        status="incomplete_expired",
        currency="usd",
        items=(),
        cancel_at_period_end=False,
        canceled_at=None,
        ended_at=end,
        cancellation_reason=None,
        current_period_end=None,
        default_payment_method_id=None,
        start_date=start,
    )
    plan = backfill_states(facts, trial_end=None)
    assert [(p.label, p.at, p.facts.status) for p in plan] == [
        ("start", start, "incomplete"),  # it never paid: no MRR before it expired
        ("end", end, "incomplete_expired"),
    ]
    assert backfill_states(replace(facts, start_date=None), trial_end=None) == []


def test_bad_input_is_refused_before_anything_runs() -> None:
    with_key = Runtime(Settings(stripe_api_key=Secret(API_KEY)))
    with pytest.raises(SettingError, match=r"^STRIPE_API_KEY: required"):
        run_backfill(Runtime(Settings()), since=None, now=NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        run_backfill(with_key, since=datetime(2025, 1, 1), now=NOW)  # naive
    with pytest.raises(ValueError, match="page size"):
        run_backfill(with_key, since=None, now=NOW, page_size=101)
    assert "engine" not in with_key.__dict__  # no database was touched


def test_the_command_backfills_then_reports_cover_that_history(
    sqlite_url: str, account: Account, tmp_path: Path
) -> None:
    env = clean_env(
        DUNNING_DATABASE_URL=sqlite_url,
        STRIPE_API_KEY=API_KEY,
        STRIPE_API_BASE=account.url,
    )
    bad = dunning(env, tmp_path, "backfill", "--since", "last week")
    assert bad.returncode == 2
    assert "YYYY-MM-DD" in bad.stderr
    done = dunning(env, tmp_path, "backfill", "--since", "2025-01-01")
    assert done.returncode == 0, done.stderr
    assert "subscriptions" in done.stdout
    months = ["--from", "2025-01", "--to", "2025-04"]
    shown = dunning(env, tmp_path, "report", "retention", *months, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    rows = {row["period"]: row for row in json.loads(shown.stdout)["rows"]}
    # Every named and filler subscription but the unreadable one started in January-February
    # 2025; two churned in April (one for non-payment).
    assert rows["2025-04"]["churn_involuntary"] == 3000
    assert rows["2025-04"]["churn_voluntary"] == 3500
    assert rows["2025-01"]["starting_mrr"] == 0
    assert rows["2025-01"]["new"] > 0
    again = dunning(env, tmp_path, "backfill", "--since", "2025-01-01")
    assert again.returncode == 0, again.stderr
    later = ["--format", "json", "--as-of", "2030-01-01T00:00:00Z"]
    shown_again = dunning(env, tmp_path, "report", "retention", *months, *later)
    assert json.loads(shown_again.stdout)["rows"] == list(rows.values())  # nothing doubled


def test_verbose_logs_show_no_customer_email(
    sqlite_url: str, account: Account, tmp_path: Path
) -> None:
    """``-v`` logs the Stripe calls, never the customers they return (issue #10, item 5)."""
    env = clean_env(
        DUNNING_DATABASE_URL=sqlite_url, STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=account.url
    )
    done = dunning(env, tmp_path, "-v", "backfill", "--since", "2025-01-01")
    assert done.returncode == 0, done.stderr
    assert "DEBUG" in done.stderr  # verbose indeed
    assert "@example.test" not in done.stderr + done.stdout
