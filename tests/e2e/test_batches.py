"""Due actions travel several to a message; a lost message loses nothing and doubles nothing.

A worker that takes only the ``intake`` and ``emails`` queues processes the webhooks; the
tick hands twenty due retries to the ``payments`` queue, where nobody takes them, and the
messages are lost (deleted from Redis). Once the claims are older than RECLAIM_AFTER the tick
hands the retries out again; the lost messages then turn up after all (a broker restored
from a snapshot), so every retry is in the queue twice. A payments worker runs them all:
each invoice is charged once, and the twin of each retry never reaches Stripe.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import redis
from celery.contrib.testing.worker import start_worker
from sqlalchemy import select

from tests.support.stack import Stack, wait_for
from worker import clock
from worker.app import create_app
from worker.dunning.models import ActionKind, ActionStatus, ScheduledAction
from worker.dunning.operations import retry_now
from worker.dunning.scheduler import RECLAIM_AFTER
from worker.dunning.state import DunningState
from worker.sim.stripe_peer import INSUFFICIENT_FUNDS, SUCCEED, CardSpec

CUSTOMERS = 20  # more than the tick spreads one to a message (dunning.tasks.SPREAD)


def _action_ids(raw: list[bytes]) -> list[int]:
    return [
        i
        for message in raw
        for i in json.loads(base64.b64decode(json.loads(message)["body"]))[1]["action_ids"]
    ]


def test_a_lost_message_of_retries_is_handed_out_again_and_charges_once(
    stack_no_worker: Stack,
) -> None:
    stack = stack_no_worker
    peer = stack.peer
    broker = redis.Redis.from_url(stack.settings.broker_url)
    invoices = []
    for i in range(CUSTOMERS):
        customer = peer.create_customer(
            email=f"c{i}@example.com",
            name=f"C {i}",
            card=CardSpec(outcomes=[INSUFFICIENT_FUNDS, SUCCEED]),
        )
        invoices.append(peer.bill(peer.create_subscription(customer_id=customer, unit_amount=2900)))
    options = {"pool": "solo", "perform_ping_check": False, "loglevel": "WARNING"}
    with start_worker(create_app(stack.settings), queues=["intake", "emails"], **options):
        peer.deliver_pending()
        cases = wait_for(
            lambda: len(found := stack.cases()) == CUSTOMERS and found, what="the cases"
        )
        with stack.app.runtime.session() as session:
            for case in cases:
                retry_now(session, case.id, policy=stack.app.runtime.policy, now=clock.now())
        assert stack.tick() >= CUSTOMERS
        lost = broker.lrange("payments", 0, -1)
        broker.delete("payments")
    retries = _action_ids(lost)
    assert len(retries) == len(set(retries)) == CUSTOMERS
    assert len(lost) < CUSTOMERS  # several retries to a message
    assert all(peer.charge_attempts(invoice) == 1 for invoice, _ in invoices)  # the bill only

    with clock.use_clock(clock.ManualClock(clock.now() + RECLAIM_AFTER + timedelta(seconds=1))):
        assert stack.tick() >= CUSTOMERS  # the lost claims, handed out again
        assert sorted(_action_ids(broker.lrange("payments", 0, -1))) == sorted(retries)
        broker.rpush("payments", *lost)  # ... and the lost messages turn up after all
        with start_worker(create_app(stack.settings), queues=["payments"], **options):
            wait_for(
                lambda: all(c.state is DunningState.RECOVERED for c in stack.cases()),
                timeout=60,
                what="every case recovered",
            )
            wait_for(lambda: broker.llen("payments") == 0, what="the twins run too")
            wait_for(lambda: not broker.hlen("unacked"), what="every message acknowledged")

    assert [peer.charge_attempts(invoice) for invoice, _ in invoices] == [2] * CUSTOMERS
    pays = [r for r in peer.requests if r.path.endswith("/pay")]
    assert len(pays) == CUSTOMERS  # no twin reached Stripe
    with stack.app.runtime.session() as session:
        rows = session.execute(
            select(ScheduledAction.status, ScheduledAction.claims).where(
                ScheduledAction.id.in_(retries)
            )
        ).all()
        assert {tuple(row) for row in rows} == {(ActionStatus.DONE, 2)}
        assert set(
            session.scalars(select(ScheduledAction.kind).where(ScheduledAction.id.in_(retries)))
        ) == {ActionKind.RETRY_PAYMENT}
