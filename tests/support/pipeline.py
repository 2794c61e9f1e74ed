"""Driving events and retry results through the real inbox and handlers (no peer, no broker).

Decline signals travel in the payload (expanded PaymentIntent, the pre-basil shape), and a
retry's result is recorded with ``record_retry_result`` as the retry task does after its
Stripe call.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support import stripe_events as ev
from tests.support.paths import START
from worker.billing.stripe_client import PaymentResult, StripeGateway
from worker.config import Policy
from worker.dunning.actions import record_retry_result, run_action
from worker.dunning.models import ActionKind, ActionStatus, DunningCase
from worker.dunning.models import ScheduledAction as Action
from worker.runtime import Runtime
from worker.settings import Secret, Settings
from worker.webhooks.handlers import Context
from worker.webhooks.inbox import store_event
from worker.webhooks.models import InboxStatus
from worker.webhooks.service import process_event


def deliver(
    session: Session, policy: Policy, payload: dict[str, Any], now: Any = START
) -> InboxStatus | None:
    stored = store_event(session, provider="stripe", body=json.dumps(payload).encode(), now=now)
    if stored.inbox_id is None:
        return None
    return process_event(session, stored.inbox_id, Context(policy, now))


def failed(
    invoice_id: str,
    decline_code: str = "insufficient_funds",
    *,
    at: Any = START,
    event_id: str | None = None,
    charge: str | None = None,
    **kw: Any,
) -> dict[str, Any]:
    charge = charge or f"ch_{invoice_id}"
    pi = ev.payment_intent(
        pi_id=f"pi_{invoice_id}", charge_id=charge, decline_code=decline_code, **kw
    )
    return ev.envelope(
        "invoice.payment_failed",
        ev.invoice(invoice_id=invoice_id, shape="acacia", payment_intent=pi, at=at),
        at=at,
        event_id=event_id,
        shape="acacia",
    )


def paid(invoice_id: str, *, at: Any = START) -> dict[str, Any]:
    return ev.envelope(
        "invoice.paid", ev.invoice(invoice_id=invoice_id, status="paid", at=at), at=at
    )


def the_case(session: Session) -> DunningCase:
    return session.scalars(select(DunningCase)).one()


def planned(session: Session, kind: ActionKind) -> list[Action]:
    return list(
        session.scalars(
            select(Action)
            .where(Action.kind == kind, Action.status == ActionStatus.PLANNED)
            .order_by(Action.due_at)
        )
    )


class RuntimeStub:
    """The one thing record_retry_result reads from a runtime: the policy."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy


def dunning_record(session: Session, policy: Policy, action_id: int, result: PaymentResult) -> None:
    record_retry_result(session, RuntimeStub(policy), action_id, result)  # type: ignore[arg-type]


KEY = "sk_test_peer"  # the API key tests' Stripe peers accept (tests/dunning/conftest.py)


@contextmanager
def task_runtime(
    session: Session, policy: Policy, url: str, *, smtp_url: str | None = None
) -> Iterator[Runtime]:
    """A task's runtime on the test's database and the Stripe peer at ``url``: run a task
    body with it (its own transactions, so the test's work is committed first). Stripe calls
    are tried twice without waiting; emails go to ``smtp_url``."""
    session.commit()
    db = session.get_bind().url.render_as_string(hide_password=False)  # type: ignore[union-attr]
    settings = Settings(
        database_url=db,
        stripe_api_key=Secret(KEY),
        stripe_api_base=url,
        smtp_url=Secret(smtp_url) if smtp_url else None,
    )
    gateway = StripeGateway(KEY, api_base=url, attempts=2, wait=lambda _: 0)
    runtime = Runtime(settings, policy=policy, gateway=gateway)
    try:
        yield runtime
    finally:
        runtime.close()


def run_claimed(
    session: Session, policy: Policy, url: str, action: Action, *, smtp_url: str | None = None
) -> Action:
    """Claim ``action`` as the scheduler does and run its task body in a task's runtime
    (:func:`task_runtime`); the action as it ended, the test's view refreshed."""
    action.status, action.claimed_at, action.claims = ActionStatus.CLAIMED, action.due_at, 1
    with task_runtime(session, policy, url, smtp_url=smtp_url) as runtime:
        run_action(runtime, action.kind, action.id)
    session.expire_all()
    return session.get_one(Action, action.id)
