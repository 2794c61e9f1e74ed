"""The inbox sweep: a pending event is handed out again with back-off, never dropped."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support import stripe_events as ev
from tests.support.paths import START
from tests.support.pipeline import KEY, deliver, task_runtime
from worker import clock
from worker.config import Policy
from worker.db import make_engine, make_sessionmaker
from worker.sim.stripe_peer import StripePeer
from worker.webhooks.inbox import hold, store_event, sweep_inbox
from worker.webhooks.models import InboxEvent, InboxStatus
from worker.webhooks.service import process_stored_event


def test_the_sweeper_backs_off_and_never_drops_an_event(db_url: str) -> None:
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    with factory.begin() as session:
        stored = store_event(
            session,
            provider="stripe",
            now=START,
            body=b'{"id": "evt_stuck", "type": "invoice.paid"}',
        )
    swept_at = []
    for minute in range(0, 600):
        with factory.begin() as session:
            if sweep_inbox(session, now=START + timedelta(minutes=minute, seconds=1)):
                swept_at.append(minute)
    assert swept_at == [1, 3, 7, 15, 31, 63, 123, 183, 243, 303, 363, 423, 483, 543]
    with factory() as session:
        row = session.get_one(InboxEvent, stored.inbox_id)
        assert row.status is InboxStatus.PENDING  # still there, still ours to process
        assert row.enqueue_count == 1 + len(swept_at)
    engine.dispose()


def test_a_row_a_worker_holds_is_not_handed_out_again(db_url: str) -> None:
    """A month-start queue: the event waits longer than a minute and a worker has just picked
    it up; the sweeper does not queue a copy that would ask Stripe again (issue #10, item 4)."""
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    with factory.begin() as session:
        stored = store_event(
            session,
            provider="stripe",
            now=START,
            body=b'{"id": "evt_held", "type": "invoice.paid"}',
        )
        assert stored.inbox_id is not None
    with factory.begin() as session:
        hold(session, stored.inbox_id, now=START + timedelta(seconds=50))
    for minutes in (1, 3, 5):
        with factory.begin() as session:
            assert sweep_inbox(session, now=START + timedelta(minutes=minutes, seconds=1)) == []
    with factory.begin() as session:  # the worker died: the row goes out again
        assert sweep_inbox(session, now=START + timedelta(minutes=6)) == [stored.inbox_id]
    engine.dispose()


def test_a_copy_of_an_event_already_processed_asks_stripe_nothing(
    session: Session, policy: Policy, manual_clock: clock.ManualClock
) -> None:
    account = StripePeer(api_key=KEY, webhook_secret="whsec_inbox", clock=manual_clock.now)
    with account.serve() as url:
        # A failure whose decline details must be fetched from Stripe (basil: not carried).
        deliver(
            session,
            policy,
            ev.envelope(
                "invoice.payment_failed", ev.invoice(invoice_id="in_x", at=START), at=START
            ),
        )
        row = session.scalars(select(InboxEvent)).one()
        row.status = InboxStatus.PENDING  # as if a copy was queued before it finished
        session.commit()
        with task_runtime(session, policy, url) as runtime:
            row_id = row.id
            process_stored_event(runtime, row_id)  # the first copy: one look-up
            asked = len(account.requests)
            assert asked >= 1
            process_stored_event(runtime, row_id)  # the second copy
        assert len(account.requests) == asked
    account.close()
