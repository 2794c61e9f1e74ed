"""The worked examples of shared/domain/metrics.md as provider events (Stripe-shaped
payloads), shared by the report tests that check them to the cent and restate them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support import stripe_events as ev
from tests.support.pipeline import deliver, dunning_record
from worker.billing.domain import Decline
from worker.billing.models import Invoice
from worker.billing.stripe_client import PaymentResult
from worker.clock import ManualClock
from worker.config import Policy
from worker.dunning.actions import run_final_action
from worker.dunning.models import ActionKind, ActionStatus, DunningCase
from worker.dunning.models import ScheduledAction as Action
from worker.reports.build import build_report
from worker.reports.model import Report
from worker.runtime import Runtime
from worker.settings import Secret, Settings
from worker.sim.stripe_peer import INSUFFICIENT_FUNDS, CardSpec, StripePeer

FEB = datetime(2026, 2, 2, 9, tzinfo=UTC)
PEER_KEY = "sk_test_examples"
AS_OF = datetime(2026, 6, 1, tzinfo=UTC)


def march(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 3, day, hour, tzinfo=UTC)


def subscription_event(
    kind: str, customer: str, sub_id: str, amount: int, *, at: datetime, **kw: Any
) -> dict[str, Any]:
    obj = ev.subscription(sub_id=sub_id, customer_id=customer, unit_amount=amount, at=at, **kw)
    return ev.envelope(f"customer.subscription.{kind}", obj, at=at)


def invoice_failed(invoice_id: str, customer: str, sub_id: str, amount: int, at: datetime) -> Any:
    pi = ev.payment_intent(pi_id=f"pi_{invoice_id}", charge_id=f"ch_{invoice_id}")
    obj = ev.invoice(
        invoice_id=invoice_id,
        customer_id=customer,
        subscription_id=sub_id,
        amount_due=amount,
        shape="acacia",
        payment_intent=pi,
        at=at,
    )
    obj["subscription"] = sub_id
    return ev.envelope("invoice.payment_failed", obj, at=at, shape="acacia")


def invoice_paid(invoice_id: str, customer: str, sub_id: str, amount: int, at: datetime) -> Any:
    obj = ev.invoice(
        invoice_id=invoice_id,
        customer_id=customer,
        subscription_id=sub_id,
        amount_due=amount,
        status="paid",
        at=at,
    )
    return ev.envelope("invoice.paid", obj, at=at)


def case_of(session: Session, invoice_ref: str) -> DunningCase:
    return session.scalars(
        select(DunningCase)
        .join(Invoice, Invoice.id == DunningCase.invoice_id)
        .where(Invoice.provider_id == invoice_ref)
    ).one()


def report(session: Session, kind: str, first: str, last: str, **kw: Any) -> Report:
    session.commit()  # the report reads in its own read-only transaction
    engine = session.get_bind()
    return build_report(engine, kind, first=first, last=last, as_of=AS_OF, **kw)  # type: ignore[arg-type]


def example_3(session: Session, policy: Policy, clock: ManualClock) -> None:
    """Customers A-G of the worked example, as events in February and March 2026. D's
    subscription also lives in a Stripe-compatible peer, which our final action cancels."""
    clock.set(FEB)
    peer = StripePeer(api_key=PEER_KEY, webhook_secret="whsec_example", clock=clock.now)
    card = CardSpec(outcomes=[INSUFFICIENT_FUNDS])
    sub_d = peer.create_subscription(
        customer_id=peer.create_customer(email="d@example.test", name="D", card=card),
        unit_amount=40_000,
    )
    for customer, sub_id, amount, quantity in [
        ("cus_A", "sub_A", 10_000, 1),
        ("cus_B", "sub_B", 5_000, 4),
        ("cus_C", "sub_C", 30_000, 1),
        ("cus_D", sub_d, 40_000, 1),
        ("cus_F", "sub_F", 25_000, 1),
        ("cus_G", "sub_G1", 20_000, 1),
        ("cus_G", "sub_G2", 15_000, 1),
    ]:
        created = subscription_event("created", customer, sub_id, amount, at=FEB, quantity=quantity)
        deliver(session, policy, created, now=FEB)
    # A upgraded; B removed a seat; C cancelled.
    deliver(session, policy, subscription_event("updated", "cus_A", "sub_A", 12_000, at=march(10)))
    b_fewer = subscription_event("updated", "cus_B", "sub_B", 5_000, at=march(12), quantity=3)
    deliver(session, policy, b_fewer)
    c_gone = subscription_event(
        "deleted",
        "cus_C",
        "sub_C",
        30_000,
        at=march(15),
        status="canceled",
        cancellation_reason="cancellation_requested",
    )
    deliver(session, policy, c_gone)
    # D: card declined, the dunning window ran out, our final action cancelled it. Stripe
    # reports a cancellation made through the API as "cancellation_requested".
    deliver(session, policy, invoice_failed("in_D", "cus_D", sub_d, 40_000, march(2)), march(2))
    case_d = case_of(session, "in_D")
    end = case_d.window_ends_at
    final = session.scalars(
        select(Action).where(Action.case_id == case_d.id, Action.kind == ActionKind.FINAL_ACTION)
    ).one()
    final.status, final.claimed_at = ActionStatus.CLAIMED, end  # the scheduler's claim
    session.commit()
    clock.set(end)
    url = session.get_bind().url.render_as_string(hide_password=False)  # type: ignore[union-attr]
    with peer.serve() as api_base:
        settings = Settings(
            database_url=url, stripe_api_key=Secret(PEER_KEY), stripe_api_base=api_base
        )
        runtime = Runtime(settings, policy=policy)
        try:  # the real task: it cancels D's subscription at the peer
            run_final_action(runtime, final.id)
        finally:
            runtime.close()
    assert peer.get(sub_d)["status"] == "canceled"
    d_gone = subscription_event(  # and Stripe's own deletion event follows
        "deleted",
        "cus_D",
        sub_d,
        40_000,
        at=end + timedelta(minutes=1),
        status="canceled",
        cancellation_reason="cancellation_requested",
    )
    deliver(session, policy, d_gone, now=end + timedelta(minutes=2))
    # E signed up.
    deliver(session, policy, subscription_event("created", "cus_E", "sub_E", 50_000, at=march(20)))
    # F: failed, our first retry declined, the second went through.
    deliver(session, policy, invoice_failed("in_F", "cus_F", "sub_F", 25_000, march(5)), march(5))
    for succeeded in (False, True):
        retry = session.scalars(
            select(Action).where(
                Action.case_id == case_of(session, "in_F").id,
                Action.kind == ActionKind.RETRY_PAYMENT,
                Action.status == ActionStatus.PLANNED,
            )
        ).one()
        retry.status, retry.claimed_at = ActionStatus.CLAIMED, retry.due_at
        clock.set(retry.due_at)  # the retry task records its result at the clock's time
        decline = Decline(code="card_declined", decline_code="insufficient_funds")
        result = PaymentResult(succeeded=succeeded, decline=None if succeeded else decline)
        dunning_record(session, policy, retry.id, result)
        if succeeded:
            paid = invoice_paid("in_F", "cus_F", "sub_F", 25_000, retry.due_at)
            deliver(session, policy, paid, now=retry.due_at)
    # G: two subscriptions; the 20,000 one ended for non-payment.
    g_gone = subscription_event(
        "deleted",
        "cus_G",
        "sub_G1",
        20_000,
        at=march(20),
        status="canceled",
        cancellation_reason="payment_failed",
    )
    deliver(session, policy, g_gone)
