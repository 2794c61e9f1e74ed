"""Property: whatever order and however often events arrive, a case never ends both recovered
and churned, and nothing is planned for a case that is over.

Each example gets its own customer and invoice ids in one migrated SQLite database, feeds a
random sequence drawn (with repeats, in any order) from a pool of real event payloads through
the inbox and handlers, and interleaves what the workers would do: our retry's result, the
final action at the window's end, and ops commands.
"""

from __future__ import annotations

import itertools
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support import stripe_events as ev
from tests.support.paths import START
from tests.support.pipeline import dunning_record
from worker import clock
from worker.billing.domain import Decline
from worker.billing.models import Invoice
from worker.billing.stripe_client import PaymentResult
from worker.config import Policy
from worker.db import make_engine, make_sessionmaker
from worker.dunning import transitions as dunning
from worker.dunning.models import ActionKind, ActionStatus, CaseTransition, DunningCase
from worker.dunning.models import ScheduledAction as Action
from worker.dunning.state import TERMINAL, DunningEvent, DunningState
from worker.ledger.models import LedgerMovement, MovementKind
from worker.migrate import upgrade
from worker.webhooks.handlers import Context
from worker.webhooks.inbox import store_event
from worker.webhooks.service import process_event

_example = itertools.count()
CODES = [
    "insufficient_funds",
    "do_not_honor",
    "expired_card",
    "processing_error",
    "fraudulent",
    "authentication_required",
    "revocation_of_authorization",
]
EVENT_KINDS = [
    "failed",
    "failed",
    "failed",
    "action_required",
    "paid",
    "voided",
    "cancel_voluntary",
    "cancel_involuntary",
    "card_updated",
]
WORKER_STEPS = ["retry_ok", "retry_declined", "window_end", "pause", "resume", "close"]


def _pool(n: int) -> list[dict[str, Any]]:
    """Distinct provider events for example ``n`` (one invoice, one customer)."""
    inv, cus, sub = f"in_p{n}", f"cus_p{n}", f"sub_p{n}"
    at = START
    pool = []
    for i, kind in enumerate(EVENT_KINDS):
        when = at + timedelta(hours=i)
        if kind == "failed":
            code = CODES[i % len(CODES)]
            pi = ev.payment_intent(
                pi_id=f"pi_p{n}_{i}",
                charge_id=f"ch_p{n}_{i}",
                decline_code=code,
                code="card_declined",
            )
            obj = ev.invoice(
                invoice_id=inv,
                customer_id=cus,
                subscription_id=sub,
                shape="acacia",
                payment_intent=pi,
                at=when,
            )
            pool.append(ev.envelope("invoice.payment_failed", obj, at=when, shape="acacia"))
        elif kind == "action_required":
            obj = ev.invoice(invoice_id=inv, customer_id=cus, subscription_id=sub, at=when)
            pool.append(ev.envelope("invoice.payment_action_required", obj, at=when))
        elif kind == "paid":
            obj = ev.invoice(
                invoice_id=inv, customer_id=cus, subscription_id=sub, status="paid", at=when
            )
            pool.append(ev.envelope("invoice.paid", obj, at=when))
        elif kind == "voided":
            obj = ev.invoice(
                invoice_id=inv, customer_id=cus, subscription_id=sub, status="void", at=when
            )
            pool.append(ev.envelope("invoice.voided", obj, at=when))
        elif kind.startswith("cancel"):
            reason = (
                "payment_failed" if kind.endswith("involuntary") else ("cancellation_requested")
            )
            obj = ev.subscription(
                sub_id=sub, customer_id=cus, status="canceled", cancellation_reason=reason, at=when
            )
            pool.append(ev.envelope("customer.subscription.deleted", obj, at=when))
        else:
            obj = ev.payment_method(pm_id=f"pm_p{n}", customer_id=cus)
            pool.append(ev.envelope("payment_method.automatically_updated", obj, at=when))
    return pool


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{Path(tmp_path_factory.mktemp('prop')) / 'p.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield make_sessionmaker(engine)
    engine.dispose()


step = st.one_of(
    st.tuples(st.just("event"), st.integers(0, len(EVENT_KINDS) - 1)),
    st.tuples(st.just("worker"), st.sampled_from(WORKER_STEPS)),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(step, min_size=1, max_size=25))
def test_random_histories_keep_the_invariants(
    factory,
    policy: Policy,  # type: ignore[no-untyped-def]
    steps: list[tuple[str, Any]],
) -> None:
    n = next(_example)
    pool = _pool(n)
    manual = clock.ManualClock(START)
    with clock.use_clock(manual), factory() as session:
        for i, (what, arg) in enumerate(steps):
            manual.set(START + timedelta(hours=i))
            if what == "event":
                body = json.dumps(pool[arg]).encode()
                stored = store_event(session, provider="stripe", body=body, now=manual.now())
                if stored.inbox_id is not None:
                    process_event(session, stored.inbox_id, Context(policy, manual.now()))
            else:
                _worker_step(session, policy, f"in_p{n}", arg)
            session.flush()
            _check(session, f"in_p{n}")
        session.commit()


def _case(session: Session, invoice_ref: str) -> DunningCase | None:
    return session.scalars(
        select(DunningCase)
        .join(Invoice, Invoice.id == DunningCase.invoice_id)
        .where(Invoice.provider_id == invoice_ref)
    ).first()


def _worker_step(session: Session, policy: Policy, invoice_ref: str, what: str) -> None:
    case = _case(session, invoice_ref)
    if case is None:
        return
    now = clock.now()
    if what.startswith("retry"):
        action = session.scalars(
            select(Action).where(
                Action.case_id == case.id,
                Action.kind == ActionKind.RETRY_PAYMENT,
                Action.status == ActionStatus.PLANNED,
            )
        ).first()
        if action is None:
            return
        action.status = ActionStatus.CLAIMED
        result = (
            PaymentResult(succeeded=True)
            if what == "retry_ok"
            else PaymentResult(
                succeeded=False,
                decline=Decline(
                    code="card_declined",
                    decline_code="do_not_honor",
                    charge_id=f"ch_ours_{action.id}",
                ),
            )
        )
        dunning_record(session, policy, action.id, result)
    elif what == "window_end":
        final = session.scalars(
            select(Action).where(
                Action.case_id == case.id,
                Action.kind == ActionKind.FINAL_ACTION,
                Action.status == ActionStatus.PLANNED,
            )
        ).first()
        if final is not None:
            final.status = ActionStatus.DONE
            dunning.apply(session, case, DunningEvent.WINDOW_EXPIRED, policy=policy, now=now)
    else:
        event = {
            "pause": DunningEvent.OPS_PAUSE,
            "resume": DunningEvent.OPS_RESUME,
            "close": DunningEvent.OPS_CLOSE,
        }[what]
        dunning.apply(session, case, event, policy=policy, now=now, source="ops")


def _check(session: Session, invoice_ref: str) -> None:
    case = _case(session, invoice_ref)
    if case is None:
        return
    kinds = {
        m.kind
        for m in session.scalars(select(LedgerMovement).where(LedgerMovement.case_id == case.id))
    }
    assert not {MovementKind.RECOVERY, MovementKind.CHURN_INVOLUNTARY} <= kinds
    if case.state is DunningState.RECOVERED:
        assert MovementKind.RECOVERY in kinds
    if case.state is DunningState.CHURNED:
        assert MovementKind.CHURN_INVOLUNTARY in kinds
    if case.state in TERMINAL:
        live = session.scalars(
            select(Action).where(Action.case_id == case.id, Action.status == ActionStatus.PLANNED)
        ).all()
        # The only thing a finished case may still have planned is the recovered confirmation.
        assert all(a.template == "payment_recovered" for a in live), [
            (a.kind, a.template) for a in live
        ]
    states = [
        (t.from_state, t.to_state)
        for t in session.scalars(
            select(CaseTransition)
            .where(CaseTransition.case_id == case.id)
            .order_by(CaseTransition.id)
        )
    ]
    for (_, previous_to), (next_from, _) in itertools.pairwise(states):
        assert next_from is previous_to  # the log is a chain
    if states:
        assert states[-1][1] is case.state
    reached = [to for _, to in states]
    terminal_seen = [s for s in reached if s in TERMINAL]
    assert len(set(terminal_seen)) <= 1  # once over, it never becomes another ending
