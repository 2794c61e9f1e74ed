"""The inbox sweep: a pending event is handed out again with back-off, never dropped."""

from __future__ import annotations

from datetime import timedelta

from tests.support.paths import START
from worker.db import make_engine, make_sessionmaker
from worker.webhooks.inbox import store_event, sweep_inbox
from worker.webhooks.models import InboxEvent, InboxStatus


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
