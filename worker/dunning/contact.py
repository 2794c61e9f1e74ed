"""How often one customer hears from us, across all their invoices.

Checked right before an email is composed, under a per-customer lock (:func:`lock_contact`,
taken before the action's row so two workers mailing one customer queue up instead of
deadlocking):

- **A cap**: at most ``emails.max_per_customer_7d`` dunning emails (first email, reminders,
  final notice, authentication request) per customer in any rolling 7 days. One over the cap
  waits until the oldest leaves the window, or is skipped when that is past its case's window.
- **One email for several invoices**: when a dunning email goes out, the same email of the
  customer's other open cases due within :data:`RIDE_ALONG` rides along: it is marked done
  (``rides along with <key>``) and its invoice is listed in this one, also when this one is
  composed again after a failed hand-off; should this one not go out after all (skipped,
  postponed, its case ended), its riders are released to go on their own
  (:func:`release_riders`).
- **No card notice the same day as a dunning email** (the customer's local day): whichever
  comes second waits for the next day.

The "payment received" confirmation is exempt: it is an answer, not a request.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from worker.billing.models import Customer, Invoice
from worker.config import Policy
from worker.dunning.models import ActionKind, ActionStatus, DunningCase, ScheduledAction
from worker.dunning.rules import customer_zone, outside_quiet_hours
from worker.email.messages import EmailKind, OtherInvoice
from worker.email.models import Notification, NotificationStatus

DUNNING_EMAILS = frozenset(
    {
        EmailKind.PAYMENT_FAILED,
        EmailKind.REMINDER,
        EmailKind.FINAL_NOTICE,
        EmailKind.ACTION_REQUIRED,
    }
)
CONTACT_WINDOW = timedelta(days=7)
RIDE_ALONG = timedelta(hours=24)
_LIVE = (NotificationStatus.SENDING, NotificationStatus.SENT)
# pg_advisory_xact_lock's first key: the namespace of per-customer contact locks ("mail").
_CONTACT_LOCKS = 0x6D61696C


@dataclass(frozen=True)
class Postpone:
    """Not now: due again at ``until``, with a note for the timeline."""

    until: datetime
    note: str


def lock_contact(session: Session, customer_id: int) -> None:
    """Serialise the emails of one customer (PostgreSQL: a transaction-level advisory lock;
    SQLite's write lock already does)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:space, :key)"),
            {"space": _CONTACT_LOCKS, "key": customer_id % 2**31},
        )


def check(
    session: Session, action: ScheduledAction, customer: Customer, *, policy: Policy, now: datetime
) -> Postpone | str | None:
    """None: send now. A note: skip it for good. :class:`Postpone`: later."""
    kind = EmailKind(action.template or "")
    if kind is not EmailKind.CARD_EXPIRING and kind not in DUNNING_EMAILS:
        return None  # "payment received" is an answer, not a request
    zone = customer_zone(customer.timezone, policy)
    quiet = policy.emails.quiet_hours
    local_day = now.astimezone(zone).date()
    tomorrow = outside_quiet_hours(
        datetime.combine(local_day + timedelta(days=1), time(0), tzinfo=zone), zone, quiet
    )
    day_start = datetime.combine(local_day, time(0), tzinfo=zone)
    if kind is EmailKind.CARD_EXPIRING:
        day_end = day_start + timedelta(days=1)
        if _dunning_email_on(session, customer.id, day_start, day_end, exclude=action.id):
            return Postpone(tomorrow, "moved: a dunning email goes out today")
        return None
    if _sent_since(session, customer.id, {EmailKind.CARD_EXPIRING}, day_start):
        return Postpone(tomorrow, "moved: a card notice went out today")
    cap = policy.emails.max_per_customer_7d
    recent = _sent_since(  # a rolling window: one sent exactly 7 days ago has left it
        session,
        customer.id,
        DUNNING_EMAILS,
        now - CONTACT_WINDOW,
        but=action.idempotency_key,
        inclusive=False,
    )
    if len(recent) < cap:
        return None
    until = outside_quiet_hours(recent[-cap] + CONTACT_WINDOW, zone, quiet)
    case = session.get(DunningCase, action.case_id) if action.case_id else None
    if case is not None and until >= case.window_ends_at:
        return f"skipped: {cap} dunning emails in 7 days already (emails.max_per_customer_7d)"
    return Postpone(until, f"moved: {cap} dunning emails in 7 days already")


def ride_along(
    session: Session, action: ScheduledAction, *, now: datetime
) -> tuple[OtherInvoice, ...]:
    """The same email of the customer's other open cases, due within :data:`RIDE_ALONG`, and
    those that joined an earlier try of this email: their invoices, for this email to list.
    The newcomers are marked done (``rides along with <key>``); :func:`release_riders` puts
    them back should this email not go out."""
    if EmailKind(action.template or "") not in DUNNING_EMAILS:
        return ()
    note = _riding(action.idempotency_key)
    already = select(Notification.id).where(
        Notification.dedupe_key == ScheduledAction.idempotency_key
    )
    joining = session.scalars(
        select(ScheduledAction)
        .where(
            ScheduledAction.customer_id == action.customer_id,
            ScheduledAction.kind == ActionKind.SEND_EMAIL,
            ScheduledAction.template == action.template,
            ScheduledAction.status.in_([ActionStatus.PLANNED, ActionStatus.CLAIMED]),
            ~already.exists(),  # a twin already handing its own over keeps it
            ScheduledAction.case_id.is_not(None),
            ScheduledAction.case_id != action.case_id,
            ScheduledAction.due_at <= now + RIDE_ALONG,
        )
        .order_by(ScheduledAction.case_id)
        .with_for_update()
    ).all()
    for sibling in joining:
        sibling.status, sibling.finished_at, sibling.note = ActionStatus.DONE, now, note
    riders = session.scalars(  # with those that joined an earlier try of this email
        select(ScheduledAction)
        .where(ScheduledAction.note == note, ScheduledAction.status == ActionStatus.DONE)
        .order_by(ScheduledAction.case_id)
    ).all()
    others: list[OtherInvoice] = []
    for sibling in riders:
        case = session.get_one(DunningCase, sibling.case_id)
        invoice = session.get_one(Invoice, case.invoice_id)
        others.append(OtherInvoice(invoice.number, invoice.amount_due, invoice.currency))
    return tuple(others)


def release_riders(session: Session, key: str, *, now: datetime) -> None:
    """The email keyed ``key`` will not go out: the emails riding along with it go on their
    own."""
    riders = session.scalars(
        select(ScheduledAction)
        .where(ScheduledAction.note == _riding(key), ScheduledAction.status == ActionStatus.DONE)
        .with_for_update()
    ).all()
    for rider in riders:
        rider.status, rider.claims, rider.due_at = ActionStatus.PLANNED, 0, now
        rider.first_due_at, rider.finished_at = now, None
        rider.note = f"on its own: {key} did not go out"


def _riding(key: str) -> str:
    return f"rides along with {key}"


def _sent_since(
    session: Session,
    customer_id: int,
    kinds: frozenset[EmailKind] | set[EmailKind],
    since: datetime,
    *,
    but: str | None = None,
    inclusive: bool = True,
) -> list[datetime]:
    """When the customer's emails of ``kinds`` went out (or started to) since ``since``
    (``inclusive``: at ``since`` too); ``but``: not that email (its own earlier hand-off,
    when it is sent again)."""
    return list(
        session.scalars(
            select(Notification.created_at)
            .where(
                Notification.customer_id == customer_id,
                Notification.dedupe_key != (but or ""),
                Notification.template.in_([k.value for k in kinds]),
                Notification.status.in_(_LIVE),
                Notification.created_at >= since if inclusive else Notification.created_at > since,
            )
            .order_by(Notification.created_at)
        )
    )


def _dunning_email_on(
    session: Session, customer_id: int, start: datetime, end: datetime, *, exclude: int
) -> bool:
    """A dunning email went out, or is due, for the customer between ``start`` and ``end``."""
    if _sent_since(session, customer_id, DUNNING_EMAILS, start):
        return True
    due = session.scalar(
        select(ScheduledAction.id).where(
            ScheduledAction.customer_id == customer_id,
            ScheduledAction.id != exclude,
            ScheduledAction.kind == ActionKind.SEND_EMAIL,
            ScheduledAction.template.in_([k.value for k in DUNNING_EMAILS]),
            ScheduledAction.status.in_([ActionStatus.PLANNED, ActionStatus.CLAIMED]),
            ScheduledAction.due_at < end,
        )
    )
    return due is not None
