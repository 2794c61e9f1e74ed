"""Claiming due actions: only due, only planned, never the same row twice."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import select

from tests.support.paths import START
from worker.billing.models import Customer, Invoice
from worker.db import make_engine, make_sessionmaker
from worker.dunning.models import ActionKind, ActionStatus, DunningCase, ScheduledAction
from worker.dunning.scheduler import RECLAIM_AFTER, claim_due


def _seed(db_url: str, count: int) -> None:
    engine = make_engine(db_url)
    with make_sessionmaker(engine).begin() as session:
        customer = Customer(provider_id="cus_s", updated_at=START)
        session.add(customer)
        session.flush()
        invoice = Invoice(
            provider_id="in_s", customer_id=customer.id, amount_due=100, currency="usd", as_of=START
        )
        session.add(invoice)
        session.flush()
        case = DunningCase(
            invoice_id=invoice.id,
            customer_id=customer.id,
            retries_mode="own",
            policy_version="test",
            opened_at=START,
            window_ends_at=START + timedelta(days=14),
            updated_at=START,
        )
        session.add(case)
        session.flush()
        session.add_all(
            ScheduledAction(
                case_id=case.id,
                customer_id=customer.id,
                kind=ActionKind.SEND_EMAIL,
                due_at=START + timedelta(minutes=i % 7),
                idempotency_key=f"k{i}",
                reason="test",
                created_at=START,
            )
            for i in range(count)
        )
        session.add(
            ScheduledAction(
                case_id=case.id,
                customer_id=customer.id,
                kind=ActionKind.RETRY_PAYMENT,
                due_at=START + timedelta(days=1),
                idempotency_key="later",
                reason="not due",
                created_at=START,
            )
        )
    engine.dispose()


def test_two_claimers_never_claim_the_same_row(db_url: str) -> None:
    _seed(db_url, 600)
    engine = make_engine(db_url, pool_size=4) if "postgresql" in db_url else make_engine(db_url)
    factory = make_sessionmaker(engine)
    claimed: list[list[int]] = [[], []]
    start = threading.Barrier(2)

    def claimer(slot: int) -> None:
        start.wait()
        while True:
            with factory.begin() as session:
                batch = claim_due(session, now=START + timedelta(hours=1), limit=50)
            if not batch:
                return
            claimed[slot].extend(c.action_id for c in batch)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    everything = claimed[0] + claimed[1]
    assert len(everything) == len(set(everything)) == 600  # all due rows, each exactly once
    with factory() as session:
        later = session.scalars(
            select(ScheduledAction).where(ScheduledAction.idempotency_key == "later")
        ).one()
        assert later.status is ActionStatus.PLANNED  # not due yet
    engine.dispose()


def test_a_lost_claim_is_handed_out_again(db_url: str) -> None:
    _seed(db_url, 1)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    now = START + timedelta(hours=1)
    with factory.begin() as session:
        assert len(claim_due(session, now=now)) == 1
    with factory.begin() as session:
        assert claim_due(session, now=now + RECLAIM_AFTER / 2) == []  # still being worked on
    with factory.begin() as session:
        assert len(claim_due(session, now=now + RECLAIM_AFTER * 2)) == 1
    engine.dispose()


def test_workers_down_for_hours_never_fail_an_action(db_url: str) -> None:
    """Workers or the broker down for two hours: the claim is lost again and again, and the
    action is handed out again each time, never failed for it (issue #10, item 1)."""
    _seed(db_url, 1)
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    now = START + timedelta(hours=1)
    end = now + timedelta(hours=2)
    handed_out = ticks = 0
    while now < end:  # a tick every few minutes; nobody finishes anything
        with factory.begin() as session:
            handed_out += len(claim_due(session, now=now))
        now, ticks = now + timedelta(minutes=4), ticks + 1
    assert handed_out == ticks // 4 + 1  # once, then again each time the claim is 16 min old
    with factory() as session:
        action = session.scalars(
            select(ScheduledAction).where(ScheduledAction.idempotency_key == "k0")
        ).one()
        assert action.status is ActionStatus.CLAIMED
        assert action.claims == handed_out
    engine.dispose()
