"""Planning a case's actions: its email cadence and final action, its next retry, the prompt
retry after a card update, and cancelling or resuming what is planned.

Every action is a ``scheduled_actions`` row with a deterministic idempotency key, planned once
(:func:`plan`); the scheduler hands it to a worker when it comes due. What to plan and when
comes from the rules (:mod:`worker.dunning.rules`). Nothing here calls Stripe or SMTP.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from worker.billing.domain import Card
from worker.billing.models import AttemptOutcome, Customer, Invoice, PaymentAttempt
from worker.billing.service import pending_attempt
from worker.config import DeclineClass, Policy, RetryMode
from worker.dunning import contact, rules
from worker.dunning.cards import (
    action_card,
    backup_cards,
    card_facts,
    card_history,
    charged_card,
    saved_cards,
)
from worker.dunning.cases import customer_timezone
from worker.dunning.models import (
    ActionKind,
    ActionStatus,
    DunningCase,
    ScheduledAction,
    new_action,
)
from worker.dunning.state import DunningEvent
from worker.ledger.models import RecoveryMethod

# What a successful prompt retry counts as, by who updated the card (metrics.md: "customer
# updated card through our link" vs "card updated by the network then retried").
PROMPT_RETRY_METHODS = (RecoveryMethod.CARD_UPDATE, RecoveryMethod.NETWORK_UPDATE)
# How far a network rule may push a retry ops asked for now; later than that it is refused.
OPS_RETRY_HORIZON = timedelta(days=1)
PAUSED_NOTE = "paused"
_PROMPT_KEY_TAG = {
    RecoveryMethod.CARD_UPDATE: "card-update",
    RecoveryMethod.NETWORK_UPDATE: "network-update",
}


def plan(
    session: Session,
    case: DunningCase,
    kind: ActionKind,
    *,
    due_at: datetime,
    key: str,
    reason: str,
    now: datetime,
    template: str | None = None,
    recovery_method: RecoveryMethod | None = None,
    payment_method: str | None = None,
    fresh: bool = False,
) -> ScheduledAction:
    """Plan an action once: a second call with the same key returns the existing row.
    ``recovery_method``: what a retry's success counts as (default: our retry).
    ``payment_method``: the card a retry charges (default: the customer's default, else the
    invoice's last card, as far as we know now; a backup retry names its own). ``fresh``:
    the key cannot exist yet (the case was opened by the event at hand, or it has never left
    ``open`` for a cadence key); the row is then written with the others at the next flush,
    in one INSERT, without looking first (its unique key still guards it)."""
    if not fresh:
        existing = session.scalar(
            select(ScheduledAction).where(ScheduledAction.idempotency_key == key)
        )
        if existing is not None:
            return existing
    if kind is ActionKind.RETRY_PAYMENT:
        recovery_method = recovery_method or RecoveryMethod.RETRY
        if payment_method is None:
            card = charged_card(session, case)
            payment_method = card.payment_method_id if card else None
    action = new_action(
        case_id=case.id,
        customer_id=case.customer_id,
        kind=kind,
        due_at=due_at,
        idempotency_key=key,
        template=template,
        reason=reason,
        recovery_method=recovery_method,
        payment_method=payment_method,
        created_at=now,
    )
    session.add(action)
    if not fresh:
        session.flush()
    return action


def _retry_count(session: Session, case: DunningCase) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(ScheduledAction)
            .where(
                ScheduledAction.case_id == case.id, ScheduledAction.kind == ActionKind.RETRY_PAYMENT
            )
        )
        or 0
    )


def _retries(session: Session, case: DunningCase) -> tuple[int, int]:
    """The case's retries: (done or running, planned ever), in one statement."""
    statuses = session.scalars(
        select(ScheduledAction.status).where(
            ScheduledAction.case_id == case.id, ScheduledAction.kind == ActionKind.RETRY_PAYMENT
        )
    ).all()
    done = sum(1 for s in statuses if s in (ActionStatus.DONE, ActionStatus.CLAIMED))
    return done, len(statuses)


def plan_retry(
    session: Session,
    case: DunningCase,
    *,
    due_at: datetime,
    reason: str,
    now: datetime,
    seq: int | None = None,
    payment_method: str | None = None,
    fresh: bool = False,
) -> ScheduledAction:
    """A retry with a fresh idempotency key (one per planned attempt, never reused): the
    ``seq``-th of the case (default: one more than it has)."""
    if seq is None:
        seq = _retry_count(session, case) + 1
    invoice = session.get_one(Invoice, case.invoice_id)
    return plan(
        session,
        case,
        ActionKind.RETRY_PAYMENT,
        due_at=due_at,
        reason=reason,
        now=now,
        key=f"dunning:{invoice.provider_id}:retry:{seq}",
        payment_method=payment_method,
        fresh=fresh,
    )


def plan_ops_retry(
    session: Session, case: DunningCase, *, policy: Policy, now: datetime
) -> ScheduledAction | rules.DroppedRetry:
    """The retry ops asked for now (see :func:`worker.dunning.operations.retry_now`), or why
    a network rule leaves it no time within :data:`OPS_RETRY_HORIZON`."""
    decision = _charge_at(
        session,
        case,
        policy=policy,
        now=now,
        reason="ops: retry now",
        window_ends_at=now + OPS_RETRY_HORIZON,  # even a case whose window is over
        own_spacing=False,
    )
    if isinstance(decision, rules.DroppedRetry):
        return decision
    action = plan_retry(session, case, due_at=decision.at, reason=decision.reason, now=now)
    action.ops_requested = True
    return action


def plan_cadence(
    session: Session, case: DunningCase, event: DunningEvent, *, policy: Policy, now: datetime
) -> None:
    """Emails and the final action for a case the failure ``event`` opened (``dunning policy
    preview`` shows the same plan from the same functions). Once per case, as it leaves
    ``open``: none of these keys exists yet."""
    zone = rules.customer_zone(customer_timezone(session, case), policy)
    for email in rules.scheduled_emails(
        policy,
        first_template=rules.first_template(event),
        opened_at=case.schedule_start,
        window_ends_at=case.window_ends_at,
        now=now,
        zone=zone,
    ):
        plan(
            session,
            case,
            ActionKind.SEND_EMAIL,
            due_at=email.at,
            now=now,
            template=email.template,
            key=f"case:{case.id}:email:{email.step}",
            reason=email.reason,
            fresh=True,
        )
    if case.retries_mode == RetryMode.OWN:  # in observe mode the provider ends its own dunning
        plan(
            session,
            case,
            ActionKind.FINAL_ACTION,
            due_at=case.window_ends_at,
            now=now,
            key=f"case:{case.id}:final",
            reason=f"window end: {policy.final_action.action}",
            fresh=True,
        )


def plan_next_retry(
    session: Session, case: DunningCase, *, policy: Policy, now: datetime, fresh: bool = False
) -> None:
    """The schedule's next retry on the card the case charges, then, when the policy says
    so, one retry on a backup card (:func:`plan_backup`). ``fresh``: the case was opened by
    the event at hand (it has no action yet)."""
    invoice = session.get_one(Invoice, case.invoice_id)
    facts = card_facts(session, invoice, now=now, policy=policy, case=case)
    if facts.pending is not None:
        return  # a payment is settling: its failure, if it fails, plans the next one
    done, planned = (0, 0) if fresh else _retries(session, case)
    decision = rules.next_retry(
        policy,
        DeclineClass(case.decline_class or DeclineClass.SOFT),
        opened_at=case.schedule_start,
        window_ends_at=case.window_ends_at,
        now=now,
        retries_done=done,
        mode=case.retries_mode,
        card=facts.history,
        amount=invoice.amount_due,
        zone=rules.customer_zone(customer_timezone(session, case), policy),
    )
    charging = charged_card(session, case, last_tried=facts.last_tried)
    _plan_decision(
        session,
        case,
        decision,
        now=now,
        dropped_key=f"dunning:{invoice.provider_id}:retry-dropped:{planned + 1}",
        seq=planned + 1,
        payment_method=charging.payment_method_id if charging else None,
        fresh=fresh,
    )
    plan_backup(
        session,
        case,
        policy=policy,
        now=now,
        out_of_budget=isinstance(decision, rules.DroppedRetry),
        fresh=fresh,
        failing=charging,
    )


_UNKNOWN = Card(None)  # "not looked up yet" (compared by identity), for plan_backup


def plan_backup(
    session: Session,
    case: DunningCase,
    *,
    policy: Policy,
    now: datetime,
    out_of_budget: bool,
    fresh: bool = False,
    failing: Card | None = _UNKNOWN,
) -> ScheduledAction | None:
    """One retry on another saved card of the customer, when ``retries.backup_methods`` says
    the default card has had its chance: declined as needing a new card (class ``hard``), out
    of network budget (``out_of_budget``), or (``after_n``) failed that many times on this
    invoice. Never for fraud or a stop order, never twice for a case (a backup that never
    charged, cancelled by a newer failure, may be planned again), only on a card still
    attached and not expired, at the first time that card's own network rules allow.
    ``fresh``: the case was opened by the event at hand; ``failing``: the card it charges,
    when the caller knows."""
    settings = policy.retries
    if settings.backup_methods == "never" or case.retries_mode != RetryMode.OWN:
        return None
    if case.decline_class in (DeclineClass.FRAUD, DeclineClass.STOP):
        # A fraud or stop-payment signal is no reason to try the customer's other cards.
        return None

    def failing_card() -> Card | None:
        nonlocal failing
        if failing is _UNKNOWN:
            failing = charged_card(session, case)
        return failing

    why = _backup_reason(session, case, failing_card, policy=policy, out_of_budget=out_of_budget)
    if why is None:
        return None
    saved = saved_cards(session, case.customer_id)
    if not saved:
        return None  # no other card on file
    candidates = backup_cards(session, case, failing=failing_card(), now=now, saved=saved)
    if not candidates:
        return None
    backups = (
        []
        if fresh
        else session.scalars(
            select(ScheduledAction).where(
                ScheduledAction.case_id == case.id,
                ScheduledAction.recovery_method == RecoveryMethod.BACKUP_METHOD,
            )
        ).all()
    )
    if any(_may_have_charged(b) for b in backups):
        return None
    invoice = session.get_one(Invoice, case.invoice_id)
    failing = failing_card()
    default_history = card_history(
        session,
        invoice,
        now=now,
        policy=policy,
        payment_method_id=failing.payment_method_id if failing else None,
        case=case,
    )
    if default_history.blocked is not None and default_history.blocked[0] == rules.NEVER:
        # The same for such a signal on the card from any invoice. A Mastercard MAC 03 on it
        # is one: it says "not this card".
        return None
    for card in candidates:
        decision = rules.network_compliant(
            policy,
            now,
            f"backup card {card.brand or 'card'} ending {card.last4 or '?'}: {why}",
            card_history(
                session,
                invoice,
                now=now,
                policy=policy,
                payment_method_id=card.payment_method_id,
                case=case,
            ),
            amount=invoice.amount_due,
            window_ends_at=case.window_ends_at,
        )
        if isinstance(decision, rules.PlannedRetry):
            return plan(
                session,
                case,
                ActionKind.RETRY_PAYMENT,
                due_at=decision.at,
                now=now,
                key=f"dunning:{invoice.provider_id}:backup:{len(backups) + 1}",
                reason=decision.reason,
                recovery_method=RecoveryMethod.BACKUP_METHOD,
                payment_method=card.payment_method_id,
                fresh=fresh,
            )
    return None


def _may_have_charged(backup: ScheduledAction) -> bool:
    """Anything but a backup cancelled before it ever went to Stripe: a charge in flight, or
    one put back after an outage (its charge may have reached Stripe, answer lost)."""
    return (
        backup.status is not ActionStatus.CANCELLED
        or backup.charging_at is not None
        or backup.first_due_at is not None
    )


def tried_as_backup(session: Session, case: DunningCase, payment_method_id: str) -> bool:
    """A backup retry of ``case`` charged (or is charging) this card."""
    found = session.scalar(
        select(ScheduledAction.id).where(
            ScheduledAction.case_id == case.id,
            ScheduledAction.recovery_method == RecoveryMethod.BACKUP_METHOD,
            ScheduledAction.payment_method == payment_method_id,
            ScheduledAction.status.in_([ActionStatus.CLAIMED, ActionStatus.DONE]),
        )
    )
    return found is not None


def _backup_reason(
    session: Session,
    case: DunningCase,
    failing: Callable[[], Card | None],
    *,
    policy: Policy,
    out_of_budget: bool,
) -> str | None:
    """Why the default card (``failing()``) has had its chance, or None while it has not."""
    if case.decline_class == DeclineClass.HARD:
        return "the default card needs replacing"
    if out_of_budget:
        return "the default card is out of network budget"
    card = failing() if policy.retries.backup_methods == "after_n" else None
    if card is not None:
        failures = session.scalar(
            select(func.count())
            .select_from(PaymentAttempt)
            .where(
                PaymentAttempt.invoice_id == case.invoice_id,
                PaymentAttempt.payment_method_id == card.payment_method_id,
                PaymentAttempt.outcome == AttemptOutcome.FAILED,
                PaymentAttempt.counted.is_(True),
            )
        )
        if (failures or 0) >= policy.retries.backup_after_failures:
            return f"the default card failed {failures} times"
    return None


def plan_card_update_retry(
    session: Session,
    case: DunningCase,
    *,
    policy: Policy,
    now: datetime,
    source: str | None,
    by_network: bool,
) -> None:
    """Exactly one prompt retry per card update, within the new card's network budget. A
    retry already planned or running for an earlier update covers this one too: the charge
    uses the default card when it runs; so does a payment still settling (a bank debit).
    ``by_network``: the card network renewed the card
    (else the customer changed it); ``source`` is the provider event that told us."""
    if prompt_retry_pending(session, case) or pending_attempt(session, case.invoice_id):
        return
    cancel(session, case, note="a card update replaces it", kinds=(ActionKind.RETRY_PAYMENT,))
    invoice = session.get_one(Invoice, case.invoice_id)
    default_card = session.scalar(
        select(Customer.default_payment_method_id).where(Customer.id == case.customer_id)
    )
    decision = rules.prompt_retry(
        policy,
        now=now,
        window_ends_at=case.window_ends_at,
        card=card_history(session, invoice, now=now, policy=policy, payment_method_id=default_card),
        amount=invoice.amount_due,
    )
    method = RecoveryMethod.NETWORK_UPDATE if by_network else RecoveryMethod.CARD_UPDATE
    key = f"dunning:{invoice.provider_id}:{_PROMPT_KEY_TAG[method]}:{source or now.isoformat()}"
    _plan_decision(
        session, case, decision, now=now, key=key, dropped_key=key, recovery_method=method
    )


def _charge_at(
    session: Session,
    case: DunningCase,
    *,
    policy: Policy,
    now: datetime,
    reason: str,
    window_ends_at: datetime,
    own_spacing: bool,
    card: Card | None = None,
) -> rules.PlannedRetry | rules.DroppedRetry:
    """When a charge asked for ``now`` may go, on the card it will use (``card``, else the
    customer's default, else the invoice's last card), by :func:`rules.network_compliant`."""
    invoice = session.get_one(Invoice, case.invoice_id)
    card = card or charged_card(session, case)
    history = card_history(
        session,
        invoice,
        now=now,
        policy=policy,
        payment_method_id=card.payment_method_id if card else None,
    )
    return rules.network_compliant(
        policy,
        now,
        reason,
        history,
        amount=invoice.amount_due,
        window_ends_at=window_ends_at,
        own_spacing=own_spacing,
    )


def clear_to_charge(
    session: Session, case: DunningCase, action: ScheduledAction, *, policy: Policy, now: datetime
) -> bool:
    """The card's rules checked again right before a retry's charge, under the card's lock:
    since it was planned, another invoice's retry, the provider or the customer may have used
    the card. True: charge now (every other check on the card counts this charge from here
    on). False: the retry moved to the first compliant time, or was dropped when none fits in
    the window; its note says which rule and why. The caller holds the card's lock
    (:func:`worker.dunning.cards.lock_cards`) until the charge is marked."""
    card = action_card(session, case, action)
    decision = _charge_at(
        session,
        case,
        policy=policy,
        now=now,
        reason="right before the charge",
        window_ends_at=(
            action.created_at + OPS_RETRY_HORIZON if action.ops_requested else case.window_ends_at
        ),
        own_spacing=not action.ops_requested,
        card=card,
    )
    if isinstance(decision, rules.PlannedRetry) and decision.at <= now:
        action.charging_at = now
        action.payment_method = card.payment_method_id if card else action.payment_method
        return True
    action.charging_at = None  # not charging: no other check counts it
    if isinstance(decision, rules.PlannedRetry):  # a new plan: its hand-outs count afresh
        action.status, action.due_at, action.claims = ActionStatus.PLANNED, decision.at, 0
        action.reason = f"{action.reason}; {decision.reason}"  # the timeline shows both
    else:
        action.status, action.finished_at = ActionStatus.CANCELLED, now
        action.note = f"network rule: {decision.reason}"
    return False


def prompt_retry_pending(session: Session, case: DunningCase) -> bool:
    """A retry prompted by a card update is planned or running for ``case``."""
    pending = session.scalar(
        select(ScheduledAction.id).where(
            ScheduledAction.case_id == case.id,
            ScheduledAction.kind == ActionKind.RETRY_PAYMENT,
            ScheduledAction.status.in_([ActionStatus.PLANNED, ActionStatus.CLAIMED]),
            ScheduledAction.recovery_method.in_(PROMPT_RETRY_METHODS),
        )
    )
    return pending is not None


def _plan_decision(
    session: Session,
    case: DunningCase,
    decision: rules.PlannedRetry | rules.DroppedRetry | None,
    *,
    now: datetime,
    dropped_key: str,
    key: str | None = None,
    recovery_method: RecoveryMethod | None = None,
    seq: int | None = None,
    payment_method: str | None = None,
    fresh: bool = False,
) -> None:
    """Plan the retry the policy placed, under ``key`` or, without one, the next numbered key
    (:func:`plan_retry`); keep a dropped one in the timeline, cancelled, never run."""
    if isinstance(decision, rules.PlannedRetry):
        if key is not None:
            plan(
                session,
                case,
                ActionKind.RETRY_PAYMENT,
                due_at=decision.at,
                now=now,
                key=key,
                reason=decision.reason,
                recovery_method=recovery_method,
                payment_method=payment_method,
                fresh=fresh,
            )
        else:
            plan_retry(
                session,
                case,
                due_at=decision.at,
                reason=decision.reason,
                now=now,
                seq=seq,
                payment_method=payment_method,
                fresh=fresh,
            )
    elif isinstance(decision, rules.DroppedRetry):
        action = plan(
            session,
            case,
            ActionKind.RETRY_PAYMENT,
            due_at=now,
            now=now,
            key=dropped_key,
            reason=decision.reason,
            recovery_method=recovery_method,
            payment_method=payment_method,
            fresh=fresh,
        )
        action.status, action.note = ActionStatus.CANCELLED, "network rule"


def cancel(
    session: Session, case: DunningCase, *, note: str, kinds: tuple[ActionKind, ...]
) -> None:
    """Cancel the case's planned actions of ``kinds``; emails that rode along with a
    cancelled email go on their own (:func:`worker.dunning.contact.release_riders`)."""
    emails = (
        session.scalars(
            select(ScheduledAction.idempotency_key).where(
                ScheduledAction.case_id == case.id,
                ScheduledAction.kind == ActionKind.SEND_EMAIL,
                ScheduledAction.status == ActionStatus.PLANNED,
            )
        ).all()
        if ActionKind.SEND_EMAIL in kinds
        else []
    )
    for key in emails:
        contact.release_riders(session, key, now=case.updated_at)  # the case just moved
    session.execute(
        update(ScheduledAction)
        .where(
            ScheduledAction.case_id == case.id,
            ScheduledAction.kind.in_(kinds),
            ScheduledAction.status == ActionStatus.PLANNED,
        )
        .values(status=ActionStatus.CANCELLED, note=note)
    )


def pause(session: Session, case: DunningCase, *, now: datetime) -> None:
    """Ops hold: every planned action is set aside (note ``paused``) and the case's clock
    stops (:attr:`DunningCase.schedule_start`)."""
    case.paused_at = now
    cancel(session, case, note=PAUSED_NOTE, kinds=tuple(ActionKind))


def hold_card_update_retry(
    session: Session,
    case: DunningCase,
    *,
    policy: Policy,
    now: datetime,
    source: str | None,
    by_network: bool,
) -> None:
    """A card update while ops hold the case: its prompt retry is planned and set aside at
    once, so the resume gives the new card its prompt retry (:func:`resume`)."""
    plan_card_update_retry(
        session, case, policy=policy, now=now, source=source, by_network=by_network
    )
    cancel(session, case, note=PAUSED_NOTE, kinds=(ActionKind.RETRY_PAYMENT,))


def _held_prompt_retry(session: Session, case: DunningCase) -> ScheduledAction | None:
    """The latest prompt retry a pause set aside (a card update before or during it)."""
    return session.scalars(
        select(ScheduledAction)
        .where(
            ScheduledAction.case_id == case.id,
            ScheduledAction.kind == ActionKind.RETRY_PAYMENT,
            ScheduledAction.status == ActionStatus.CANCELLED,
            ScheduledAction.note == PAUSED_NOTE,
            ScheduledAction.recovery_method.in_(PROMPT_RETRY_METHODS),
        )
        .order_by(ScheduledAction.id.desc())
    ).first()


def resumes_retrying(session: Session, case: DunningCase) -> bool:
    """Whether a paused case resumes retrying, or waits for the customer: its latest decline
    (a hard decline or an authentication may have come in during the pause) decides, unless
    the card was updated, which earns a prompt retry either way."""
    cls = DeclineClass(case.decline_class or DeclineClass.SOFT)
    return rules.is_retryable(cls) or _held_prompt_retry(session, case) is not None


def resume(session: Session, case: DunningCase, *, policy: Policy, now: datetime) -> None:
    """The end of an ops hold: the case's clock runs again from where it stopped. The window
    and every action set aside by the pause move on by its length, so the plan continues
    where it left off instead of firing everything that fell due meanwhile; an email still
    keeps out of the customer's quiet hours. Retries are planned afresh: the prompt retry a
    card update earned (before or during the pause), else the moved schedule's next one,
    each under the card's rules as they are now."""
    held = now - (case.paused_at or now)
    case.paused_at = None
    case.paused_seconds += int(held.total_seconds())
    case.window_ends_at += held
    zone = rules.customer_zone(customer_timezone(session, case), policy)
    prompt = _held_prompt_retry(session, case)
    set_aside = session.scalars(
        select(ScheduledAction).where(
            ScheduledAction.case_id == case.id,
            ScheduledAction.status == ActionStatus.CANCELLED,
            ScheduledAction.note == PAUSED_NOTE,
        )
    ).all()
    for action in set_aside:
        if action.kind is ActionKind.RETRY_PAYMENT:
            action.note = "paused; planned afresh at the resume"
            continue
        due_at = max(action.due_at + held, now)
        if action.kind is ActionKind.SEND_EMAIL:
            due_at = rules.outside_quiet_hours(due_at, zone, policy.emails.quiet_hours)
        if action.kind is ActionKind.FINAL_ACTION:
            due_at = case.window_ends_at
        action.due_at, action.status, action.note = due_at, ActionStatus.PLANNED, None
        if action.first_due_at is not None:  # "how late is it" runs on the case's clock too
            action.first_due_at += held
    if prompt is not None and case.retries_mode == RetryMode.OWN:
        plan_card_update_retry(
            session,
            case,
            policy=policy,
            now=now,
            source=f"resume-{now.isoformat()}",
            by_network=prompt.recovery_method is RecoveryMethod.NETWORK_UPDATE,
        )
    else:
        plan_next_retry(session, case, policy=policy, now=now)
