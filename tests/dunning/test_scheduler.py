"""Claiming due actions: only due, only planned, never the same row twice."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, select, text

from tests.support.paths import REPO, START
from worker import clock
from worker.app import create_app
from worker.billing.models import Customer, Invoice
from worker.db import make_engine, make_sessionmaker
from worker.dunning.models import ActionKind, ActionStatus, DunningCase, ScheduledAction
from worker.dunning.scheduler import RECLAIM_AFTER, claim_due, in_flight
from worker.settings import Settings


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


def test_claims_use_the_partial_indexes_whatever_the_history(pg: str) -> None:
    """An empty tick costs index probes, not a walk of the table: 30,000 finished actions,
    6,000 planned for later, a few hundred in flight; EXPLAIN each statement the claim and
    the in-flight count send, as sent."""
    engine = make_engine(pg)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO customers (provider, provider_id, updated_at)"
                " VALUES ('stripe', 'cus_x', :at)"
            ),
            {"at": START},
        )
        conn.execute(
            text(
                "INSERT INTO scheduled_actions (customer_id, kind, due_at, status,"
                " idempotency_key, reason, created_at, claimed_at, claims, ops_requested)"
                " SELECT 1, 'send_email', :at + make_interval(hours => g - 30000),"
                "  CASE WHEN g <= 30000 THEN 'done' WHEN g <= 36000 THEN 'planned'"
                "   ELSE 'claimed' END,"
                "  'x' || g, 'test', :at, CASE WHEN g > 36000 THEN :at END, 0, false"
                " FROM generate_series(1, 36300) AS g"
            ),
            {"at": START},
        )
        conn.execute(text("ANALYZE scheduled_actions"))
    sent: list[tuple[str, Any]] = []

    def keep(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", keep)
    with make_sessionmaker(engine).begin() as session:
        assert claim_due(session, now=START) == []
        assert in_flight(session, now=START, at_most=1_000) == 300
    event.remove(engine, "before_cursor_execute", keep)
    with make_sessionmaker(engine)() as session:
        assert in_flight(session, now=START, at_most=100) == 100  # walks no further
    assert len(sent) == 3  # lost claims, planned claims, the count
    plans = []
    with engine.connect() as conn:
        for statement, parameters in sent:
            plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {statement}", parameters))
            assert "Seq Scan" not in plan, plan
            assert "Sort" not in plan, plan  # walked in index order, stopped at the limit
            plans.append(plan)
    assert "ix__scheduled_actions__claimed_at" in plans[0]
    assert "ix__scheduled_actions__planned_due" in plans[1]
    assert "ix__scheduled_actions__claimed_at" in plans[2]
    engine.dispose()


def test_one_failing_action_does_not_stop_the_rest_of_its_message(
    db_url: str, tmp_path: Path
) -> None:
    """Each action of a message runs in its own transactions: the second one fails (a level
    no release knows, as a bad row would), the third still runs, the task fails with the
    error, and the failed action stays claimed for RECLAIM_AFTER to hand out again."""
    _seed(db_url, 0)
    engine = make_engine(db_url)
    with make_sessionmaker(engine).begin() as session:
        case = session.scalars(select(DunningCase)).one()
        actions = [
            ScheduledAction(
                case_id=case.id,
                customer_id=case.customer_id,
                kind=ActionKind.ACCESS_CHANGE,
                template=level,
                due_at=START,
                status=ActionStatus.CLAIMED,
                claimed_at=START,
                idempotency_key=f"access:{level}",
                reason="test",
                created_at=START,
            )
            for level in ("grace", "no-such-level", "limited")
        ]
        session.add_all(actions)
        session.flush()
        ids = [action.id for action in actions]
    config = REPO / "config" / "dunning.toml"
    app = create_app(Settings(database_url=db_url, config_path=config, data_dir=tmp_path))
    with clock.use_clock(clock.ManualClock(START + timedelta(minutes=1))):
        result = app.tasks["dunning.access_change"].apply(kwargs={"action_ids": ids})
    assert isinstance(result.result, ValueError)
    with make_sessionmaker(engine)() as session:
        rows = {
            a.idempotency_key: (a.status, a.note)
            for a in session.scalars(select(ScheduledAction).where(ScheduledAction.id.in_(ids)))
        }
        assert rows == {
            "access:grace": (ActionStatus.DONE, "access grace"),
            "access:no-such-level": (ActionStatus.CLAIMED, None),
            "access:limited": (ActionStatus.DONE, "access limited"),
        }
        assert session.get_one(DunningCase, case.id).access == "limited"
    app.runtime.close()
    engine.dispose()
