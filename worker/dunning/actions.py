"""Carrying out due actions: a retry through Stripe, an email, the final action.

Each runner takes the :class:`~worker.runtime.Runtime` and an action id and is safe to run
twice (Celery redelivery, a second beat). Provider calls happen *between* two short
transactions, never while a row lock is held: the first checks the action is still wanted,
the second records the outcome under the case lock and re-checks that nobody recorded it
meanwhile. The provider call itself is made idempotent by the action's key. A retry's first
transaction also checks the card's rules again (:func:`worker.dunning.planning.clear_to_charge`).

:func:`run_action` is what the Celery tasks call: a transient failure (Stripe 5xx, SMTP down)
puts the action back with a back-off; only a permanent reason fails it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from worker import appwebhook, clock
from worker.billing import service as billing
from worker.billing.models import (
    AttemptOutcome,
    AttemptSource,
    Customer,
    Invoice,
    PaymentAttempt,
    Subscription,
)
from worker.billing.stripe_client import (
    PaymentResult,
    ProviderError,
    StripeGateway,
    TransientProviderError,
)
from worker.config import Policy
from worker.dunning import access, contact, emails, planning
from worker.dunning.cards import action_card, expiry_end, lock_cards
from worker.dunning.cases import lock_case, paid_elsewhere, policy_of
from worker.dunning.models import (
    ActionKind,
    ActionStatus,
    AppEvent,
    DunningCase,
    ScheduledAction,
)
from worker.dunning.scheduler import transient_backoff
from worker.dunning.state import TERMINAL, DunningEvent, DunningState
from worker.dunning.transitions import apply, case_failure_event
from worker.email import service as email_outbox
from worker.email.messages import EmailKind
from worker.email.models import NotificationStatus
from worker.email.sender import (
    PermanentEmailError,
    TransientEmailError,
    UnconfirmedEmailError,
    mask_email,
)
from worker.ledger import history
from worker.ledger.models import RecoveryMethod
from worker.redact import redact
from worker.runtime import Runtime
from worker.telemetry import EMAILS

log = logging.getLogger(__name__)
_RUNNABLE = frozenset({ActionStatus.PLANNED, ActionStatus.CLAIMED})
# How long an email or final action waits before looking again at a payment still processing
# (bank debits settle in days).
PROCESSING_RECHECK = timedelta(days=1)


def _still_wanted(session: Session, action_id: int) -> ScheduledAction | None:
    """The action if it should run now; otherwise None (finished, cancelled, case over).
    The case is locked before the action (the order every writer of both keeps): a pause
    or resume committing meanwhile is seen, so an action is never set aside by a pause
    that a resume has already ended."""
    case_id = session.scalar(select(ScheduledAction.case_id).where(ScheduledAction.id == action_id))
    case = lock_case(session, case_id) if case_id is not None else None
    action = session.get(ScheduledAction, action_id, with_for_update=True)
    if action is None or action.status not in _RUNNABLE:
        return None
    if case is not None and (
        case.state is DunningState.PAUSED
        or (case.state in TERMINAL and action.template != EmailKind.PAYMENT_RECOVERED)
    ):
        # A resume puts an action set aside by a pause back, moved on by the pause.
        paused = case.state is DunningState.PAUSED
        note = planning.PAUSED_NOTE if paused else f"case {case.state.value}"
        _finish(action, ActionStatus.CANCELLED, note)
        return None
    if (
        case is not None
        and case.state not in TERMINAL
        and billing.pending_attempt(session, case.invoice_id)
    ):
        # A payment is settling (a bank debit): no other charge, and no dunning email or
        # final action while it may still succeed. A retry waits for the outcome to be
        # planned again; the rest looks again later.
        if action.kind is ActionKind.RETRY_PAYMENT:
            _finish(action, ActionStatus.CANCELLED, "a payment is processing")
        else:
            action.status, action.claims = ActionStatus.PLANNED, 0
            action.due_at = clock.now() + PROCESSING_RECHECK
            action.note = "waiting: a payment is processing"
        return None
    return action


def _finish(action: ScheduledAction, status: ActionStatus, note: str) -> None:
    action.status, action.note, action.finished_at = status, note, clock.now()


def _give_up(runtime: Runtime, action_id: int, note: str) -> None:
    """The action cannot run here at all (no Stripe key): it fails visibly instead of being
    handed out again and again. Refusals and outages have their own paths
    (:func:`_retry_refused`, :func:`_postpone`)."""
    with runtime.session() as session:
        action = session.get(ScheduledAction, action_id, with_for_update=True)
        if action is not None and action.status in _RUNNABLE:
            _finish(action, ActionStatus.FAILED, note)
    log.warning("action %s failed: %s", action_id, note)


def run_retry(runtime: Runtime, action_id: int) -> None:
    with runtime.session() as session:
        owner = session.execute(
            select(ScheduledAction.case_id, ScheduledAction.customer_id).where(
                ScheduledAction.id == action_id
            )
        ).first()
        if owner is None or owner.case_id is None:
            return
        # The case, then the card lock (not a row: see lock_cards), then the action.
        case = lock_case(session, owner.case_id)
        lock_cards(session, owner.customer_id)
        action = _still_wanted(session, action_id)
        if action is None:
            return
        policy = policy_of(session, case, runtime.policy)
        if not planning.clear_to_charge(session, case, action, policy=policy, now=clock.now()):
            return
        key = action.idempotency_key
        invoice_ref = session.get_one(Invoice, case.invoice_id).provider_id
        customer_ref = session.get_one(Customer, case.customer_id).provider_id
        backup = (
            action.payment_method
            if action.recovery_method is RecoveryMethod.BACKUP_METHOD
            else None
        )
    gateway = runtime.gateway
    if gateway is None:
        _give_up(runtime, action_id, "STRIPE_API_KEY is not set: cannot retry payments")
        return
    try:
        if backup is not None and (unusable := _backup_unusable(gateway, backup, customer_ref)):
            _retry_refused(runtime, action_id, unusable)
            return
        result = gateway.pay_invoice(invoice_ref, idempotency_key=key, payment_method=backup)
    except ProviderError as exc:
        _retry_refused(runtime, action_id, f"provider refused: {exc}")
        return
    with runtime.session() as session:
        record_retry_result(session, runtime, action_id, result)


def _backup_unusable(gateway: StripeGateway, payment_method: str, customer_ref: str) -> str | None:
    """Why the backup card may not be charged as Stripe has it now (the mirror may be
    behind): detached, moved to another customer, or expired. None: charge it."""
    attached_to, card = gateway.saved_card(payment_method)
    if attached_to != customer_ref:
        return "backup card no longer on file: not charged"
    if (
        card.exp_year
        and card.exp_month
        and expiry_end(card.exp_year, card.exp_month) <= clock.now()
    ):
        return "backup card expired: not charged"
    return None


def record_retry_result(
    session: Session, runtime: Runtime, action_id: int, result: PaymentResult
) -> None:
    action = session.get_one(ScheduledAction, action_id)
    assert action.case_id is not None  # noqa: S101 - retries always belong to a case
    case = lock_case(session, action.case_id)
    session.refresh(action, with_for_update=True)
    if action.status not in _RUNNABLE:
        return  # a redelivered twin recorded it first
    now = clock.now()
    policy = policy_of(session, case, runtime.policy)
    invoice = session.get_one(Invoice, case.invoice_id)
    if case.state not in TERMINAL:
        apply(
            session,
            case,
            DunningEvent.RETRY_DUE,
            policy=policy,
            now=now,
            source=action.idempotency_key,
            reason=action.reason,
        )
    method = action.recovery_method or RecoveryMethod.RETRY
    if result.already_paid:  # someone else paid first; our call only found out
        method = paid_elsewhere(case)
    if result.succeeded:
        # Paid now, whatever webhooks still in flight say (a late failure must not count).
        invoice.status, invoice.amount_paid = "paid", invoice.amount_due
        if not result.already_paid:  # our charge went through: one attempt on the card
            our_charge(session, case, action, AttemptOutcome.SUCCEEDED, now=now).counted = True
        apply(
            session,
            case,
            DunningEvent.PAYMENT_SUCCEEDED,
            policy=policy,
            now=now,
            source=action.idempotency_key,
            method=method,
            reason="our retry succeeded",
        )
        _finish(action, ActionStatus.DONE, "paid")
        return
    if result.processing:
        _processing(session, case, action, policy=policy, now=now)
        return
    decline = result.decline
    assert decline is not None  # noqa: S101 - a failed PaymentResult always carries one
    outcome = AttemptOutcome.ACTION_REQUIRED if result.requires_action else AttemptOutcome.FAILED
    backup = action.recovery_method is RecoveryMethod.BACKUP_METHOD
    if backup and (decline.card is None or decline.card.payment_method_id is None):
        decline = replace(decline, card=action_card(session, case, action))
    attempt = billing.record_attempt(
        session,
        invoice=invoice,
        source=AttemptSource.OURS,
        outcome=outcome,
        at=now,
        decline=decline,
        action_id=action.id,
        card=action_card(session, case, action) if backup else None,
    )
    # Finish first: planning the next retry counts finished retries.
    _finish(action, ActionStatus.DONE, f"declined: {decline.reason or 'unknown'}")
    if billing.count_once(attempt):
        apply(
            session,
            case,
            case_failure_event(
                session, case, decline, policy, requires_action=result.requires_action
            ),
            policy=policy,
            now=now,
            decline=decline,
            source=action.idempotency_key,
            reason=f"our retry declined: {decline.reason or 'unknown'}",
        )


def our_charge(
    session: Session,
    case: DunningCase,
    action: ScheduledAction,
    outcome: AttemptOutcome,
    *,
    now: datetime,
) -> PaymentAttempt:
    """Record our retry's charge that the provider answered without a decline (paid, or
    processing) on the card it charged."""
    return billing.record_attempt(
        session,
        invoice=session.get_one(Invoice, case.invoice_id),
        source=AttemptSource.OURS,
        outcome=outcome,
        at=now,
        decline=None,
        action_id=action.id,
        card=action_card(session, case, action),
    )


def _processing(
    session: Session,
    case: DunningCase,
    action: ScheduledAction,
    *,
    policy: Policy,
    now: datetime,
) -> None:
    """The provider accepted our retry's charge and has not settled it (a bank debit): not a
    recovery, not a decline. The attempt stays pending until ``invoice.paid`` or a failure
    settles it; nothing else is tried meanwhile."""
    _finish(action, ActionStatus.DONE, "processing: accepted, not settled yet")
    invoice = session.get_one(Invoice, case.invoice_id)
    if invoice.status == "paid":  # it settled, and invoice.paid was processed first
        our_charge(session, case, action, AttemptOutcome.SUCCEEDED, now=now).counted = True
        return
    since = action.charging_at or now
    reported = session.scalar(
        select(PaymentAttempt.id).where(
            or_(
                PaymentAttempt.action_id == action.id,
                (PaymentAttempt.invoice_id == invoice.id) & (PaymentAttempt.occurred_at >= since),
            )
        )
    )
    if reported is not None or case.state in TERMINAL:
        return  # its outcome was reported first (or the case is over): nothing is pending
    our_charge(session, case, action, AttemptOutcome.PROCESSING, now=now)
    apply(
        session,
        case,
        DunningEvent.PAYMENT_PROCESSING,
        policy=policy,
        now=now,
        source=action.idempotency_key,
        reason="our retry was accepted and is processing (bank debit)",
    )


def _retry_refused(runtime: Runtime, action_id: int, note: str) -> None:
    """Stripe refused this retry's request for good (a 4xx, or ``Stripe-Should-Retry:
    false``): that attempt fails, not the case. The schedule's next retry is planned, with its
    own key; the refused one is never sent again."""
    with runtime.session() as session:
        case_id = session.scalar(
            select(ScheduledAction.case_id).where(ScheduledAction.id == action_id)
        )
        case = lock_case(session, case_id) if case_id is not None else None
        action = session.get(ScheduledAction, action_id, with_for_update=True)
        if case is None or action is None or action.status not in _RUNNABLE:
            return
        _finish(action, ActionStatus.FAILED, note)
        if case.state not in TERMINAL and case.state is not DunningState.PAUSED:
            policy = policy_of(session, case, runtime.policy)
            planning.plan_next_retry(session, case, policy=policy, now=clock.now())
    log.warning("retry %s failed: %s", action_id, note)


def _postpone(runtime: Runtime, action_id: int, note: str) -> None:
    """A transient failure (Stripe 5xx or unreachable, SMTP down or 4xx): the action goes back
    to planned, due again after a back-off that grows with its hand-outs. Nothing fails for
    an outage, however long; a retry replays with the same key, so a charge Stripe made
    before the answer was lost is not made twice."""
    with runtime.session() as session:
        action = session.get(ScheduledAction, action_id, with_for_update=True)
        if action is None or action.status not in _RUNNABLE:
            return
        due = clock.now() + transient_backoff(action.claims)
        action.first_due_at = action.first_due_at or action.due_at
        action.status, action.due_at, action.charging_at = ActionStatus.PLANNED, due, None
        action.note = f"{note}; tried again at {due:%Y-%m-%d %H:%M} UTC"
    log.warning("action %s put back: %s", action_id, note)


def run_email(runtime: Runtime, action_id: int) -> None:
    """Reserve the send (a ``sending`` outbox row), talk SMTP outside any transaction, then
    record the outcome (:mod:`worker.email.service`). A transient failure leaves the row
    ``sending`` and the action is tried again (:func:`run_action`). Every outcome is counted
    once its transaction committed (``dunning_emails_total``)."""
    try:
        outcome = _run_email(runtime, action_id)
    except TransientEmailError:
        EMAILS.labels("deferred").inc()
        raise
    if outcome is not None:
        EMAILS.labels(outcome).inc()


def _run_email(runtime: Runtime, action_id: int) -> str | None:
    """:func:`run_email`; returns the outcome to count (None: nothing happened here)."""
    with runtime.session() as session:
        customer_id = session.scalar(
            select(ScheduledAction.customer_id).where(ScheduledAction.id == action_id)
        )
        if customer_id is None:
            return None
        # The customer's emails one at a time (contact rules), taken before the action's row.
        contact.lock_contact(session, customer_id)
        action = _still_wanted(session, action_id)
        now = clock.now()
        if action is None:
            gone = session.get_one(ScheduledAction, action_id)
            if gone.status is ActionStatus.CANCELLED:  # its case ended or paused meanwhile
                contact.release_riders(session, gone.idempotency_key, now=now)
            return None  # not an email outcome: the case ended, or the action was done
        late = now - (action.first_due_at or action.due_at)
        limit = timedelta(hours=runtime.policy.emails.skip_overdue_after_hours)
        if late > limit:  # after an outage: no burst of stale emails
            hours = late.total_seconds() / 3600
            _finish(action, ActionStatus.CANCELLED, f"skipped: {hours:.1f} h overdue")
            contact.release_riders(session, action.idempotency_key, now=now)
            return "skipped"
        prepared = emails.prepare_action_email(
            session,
            action,
            policy=runtime.policy,
            public_url=runtime.settings.public_url,
            link_keys=runtime.settings.link_keys,
            now=now,
        )
        if prepared is None:  # a twin is handing it over: it records the outcome
            return None
        if isinstance(prepared, contact.Postpone):  # due again later, measured from then
            action.status, action.claims, action.note = ActionStatus.PLANNED, 0, prepared.note
            action.due_at = action.first_due_at = prepared.until
            contact.release_riders(session, action.idempotency_key, now=now)
            return "postponed"
        if isinstance(prepared, str):
            _finish(action, ActionStatus.DONE, prepared)
            if prepared == emails.ALREADY_SENT:
                return "duplicate"
            # not going out: its riders go on their own
            contact.release_riders(session, action.idempotency_key, now=now)
            return "skipped"
    outcome, status, counted = NotificationStatus.SENT, ActionStatus.DONE, "sent"
    note, error = f"sent to {mask_email(prepared.to)}", None
    try:
        runtime.sender.send(prepared)
    except UnconfirmedEmailError as exc:  # it may well have arrived: never sent twice
        note = error = f"sent, unconfirmed: {exc}"
        counted = "unconfirmed"
    except PermanentEmailError as exc:  # e.g. 550 unknown recipient: retrying cannot help
        outcome, status, error = NotificationStatus.FAILED, ActionStatus.FAILED, redact(str(exc))
        note = f"email refused: {error}"  # the server's text may echo the address
        counted = "failed"
    with runtime.session() as session:
        email_outbox.record(session, prepared.message_id_key, outcome, now=clock.now(), error=error)
        action = session.get(ScheduledAction, action_id, with_for_update=True)
        if action is not None and action.status in _RUNNABLE:
            _finish(action, status, note)
    return counted


def run_final_action(runtime: Runtime, action_id: int) -> None:
    with runtime.session() as session:
        action = _still_wanted(session, action_id)
        if action is None:
            return
        assert action.case_id is not None  # noqa: S101 - final actions belong to a case
        case = session.get_one(DunningCase, action.case_id)
        invoice = session.get_one(Invoice, case.invoice_id)
        sub = (
            session.get(Subscription, invoice.subscription_id) if invoice.subscription_id else None
        )
        key = action.idempotency_key
        what = policy_of(session, case, runtime.policy).final_action.action
        invoice_ref, sub_ref = invoice.provider_id, sub.provider_id if sub else None
        sub_id = sub.id if sub else None
        if invoice.status in billing.FINAL_INVOICE_STATUSES:
            # Its webhook may have been set aside while this action was claimed: settle here.
            _finish(action, ActionStatus.CANCELLED, f"invoice already {invoice.status}")
            _settle(session, runtime, lock_case(session, case.id), invoice.status, source=key)
            return
    if _settled_at_provider(runtime, action_id, invoice_ref, source=key):
        return
    outcome: str = what
    if what != "leave_past_due":
        outcome = _take_final_action(
            runtime, what, sub_ref=sub_ref, invoice_ref=invoice_ref, key=key
        )
    with runtime.session() as session:
        action = session.get_one(ScheduledAction, action_id)
        case = lock_case(session, case.id)
        session.refresh(action, with_for_update=True)
        if action.status not in _RUNNABLE:
            return
        _finish(action, ActionStatus.DONE, outcome)
        # The window is over either way: a refused cancellation must not leave the case
        # open with nothing planned. The note says what the provider answered.
        apply(
            session,
            case,
            DunningEvent.WINDOW_EXPIRED,
            policy=runtime.policy,
            now=clock.now(),
            source=key,
            reason=f"window ended: {outcome}",
        )
        if outcome == "cancel_subscription" and sub_id is not None:
            history.record_final_action_end(
                session,
                session.get_one(Subscription, sub_id),
                at=clock.now(),
                source=key,
                now=clock.now(),
            )


def _settled_at_provider(
    runtime: Runtime, action_id: int, invoice_ref: str, *, source: str
) -> bool:
    """Ask the provider, right before acting, whether the invoice is still unpaid: during a
    webhook backlog the customer may have paid, or the invoice been voided, minutes ago. If
    not, settle the case from what the provider says and skip the action; True then."""
    gateway = runtime.gateway
    if gateway is None:
        return False
    try:
        status = gateway.invoice_status(invoice_ref)
    except ProviderError as exc:  # the action's own call will meet the same refusal
        log.warning("final action: invoice %s not re-read: %s", invoice_ref, exc)
        return False
    if status not in billing.FINAL_INVOICE_STATUSES:
        return False
    with runtime.session() as session:
        action = session.get_one(ScheduledAction, action_id)
        assert action.case_id is not None  # noqa: S101 - final actions belong to a case
        case = lock_case(session, action.case_id)
        session.refresh(action, with_for_update=True)
        if action.status not in _RUNNABLE:
            return True
        _finish(action, ActionStatus.CANCELLED, f"invoice is {status} at the provider")
        invoice = session.get_one(Invoice, case.invoice_id)
        invoice.status = status
        _settle(session, runtime, case, status, source=source)
    return True


def _settle(
    session: Session, runtime: Runtime, case: DunningCase, status: str, *, source: str
) -> None:
    """End ``case`` by its invoice's final status (once: a terminal case absorbs it)."""
    if status == "paid":
        apply(
            session,
            case,
            DunningEvent.PAYMENT_SUCCEEDED,
            policy=runtime.policy,
            now=clock.now(),
            source=source,
            method=paid_elsewhere(case),
            reason="paid before the final action ran",
        )
    else:
        apply(
            session,
            case,
            DunningEvent.INVOICE_CLOSED,
            policy=runtime.policy,
            now=clock.now(),
            source=source,
            reason=f"invoice {status} before the final action ran",
        )


def _take_final_action(
    runtime: Runtime, what: str, *, sub_ref: str | None, invoice_ref: str, key: str
) -> str:
    gateway = runtime.gateway
    if gateway is None:
        return f"{what} not done: STRIPE_API_KEY is not set"
    try:
        if what == "cancel_subscription" and sub_ref is not None:
            gateway.cancel_subscription(sub_ref, idempotency_key=key)
        else:
            gateway.mark_uncollectible(invoice_ref, idempotency_key=key)
    except ProviderError as exc:
        log.warning("final action %s refused: %s", what, exc)
        return f"{what} refused by the provider: {exc}"
    return what


def run_access_change(runtime: Runtime, action_id: int) -> None:
    """The case's next access level is due (a paused or ended case cancels it first)."""
    with runtime.session() as session:
        case_id = session.scalar(
            select(ScheduledAction.case_id).where(ScheduledAction.id == action_id)
        )
        if case_id is None:
            return
        case = lock_case(session, case_id)
        action = _still_wanted(session, action_id)
        if action is None:
            return
        level = access.Access(action.template or access.Access.FULL)
        _finish(action, ActionStatus.DONE, access.change(session, case, level, now=clock.now()))


def run_notify_app(runtime: Runtime, action_id: int) -> None:
    """POST one signed event to the app, outside any transaction; any 2xx delivers it. No
    answer or another status: tried again after a back-off, until
    :data:`~worker.dunning.access.DELIVERY_HORIZON` after it was planned."""
    url, secret = runtime.settings.app_webhook_url, runtime.settings.app_webhook_secret
    with runtime.session() as session:
        action = _still_wanted(session, action_id)
        if action is None:
            return
        if url is None or secret is None:
            _finish(action, ActionStatus.DONE, "not sent: DUNNING_APP_WEBHOOK_URL is not set")
            return
        event = session.scalars(
            select(AppEvent).where(AppEvent.dedupe_key == action.idempotency_key)
        ).one()
        event_id, body = event.id, json.dumps(event.payload, sort_keys=True).encode()
    now = clock.now()
    status: int | None = None
    try:
        answered = appwebhook.post(url, secret.reveal(), body, timestamp=int(now.timestamp()))
        status, error = answered, (None if 200 <= answered < 300 else f"HTTP {answered}")
    except appwebhook.NoAnswerError as exc:
        error = f"no answer: {exc}"
    with runtime.session() as session:
        event = session.get_one(AppEvent, event_id, with_for_update=True)
        event.attempts += 1
        event.last_attempt_at, event.last_status, event.last_error = now, status, error
        action = session.get(ScheduledAction, action_id, with_for_update=True)
        if action is None or action.status not in _RUNNABLE:
            return
        if error is None:
            event.delivered_at = now
            _finish(action, ActionStatus.DONE, f"delivered (HTTP {status})")
        elif now - action.created_at >= access.DELIVERY_HORIZON:
            _finish(
                action, ActionStatus.FAILED, f"gave up after {event.attempts} attempts: {error}"
            )
        else:
            due = now + transient_backoff(action.claims)
            action.status, action.due_at = ActionStatus.PLANNED, due
            action.note = f"{error}; tried again at {due:%Y-%m-%d %H:%M} UTC"
    if error is not None:
        log.warning("app webhook %s not delivered: %s", action_id, error)


RUNNERS = {
    ActionKind.RETRY_PAYMENT: run_retry,
    ActionKind.SEND_EMAIL: run_email,
    ActionKind.FINAL_ACTION: run_final_action,
    ActionKind.ACCESS_CHANGE: run_access_change,
    ActionKind.NOTIFY_APP: run_notify_app,
}


def run_action(runtime: Runtime, kind: ActionKind, action_id: int) -> None:
    """Run a due action of ``kind``; a transient failure puts it back (:func:`_postpone`)."""
    try:
        RUNNERS[kind](runtime, action_id)
    except (TransientProviderError, TransientEmailError) as exc:
        _postpone(runtime, action_id, f"transient: {exc}")
