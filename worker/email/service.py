"""Sending a customer email once per dedupe key, with an outbox row that proves it.

Three steps, and no transaction is open while SMTP talks: :func:`reserve` writes the outbox
row (``notifications.dedupe_key`` UNIQUE) as ``sending`` and commits with the caller; the
caller hands the message to the server; :func:`record` writes the outcome in a new
transaction. A twin task that finds the row ``sending`` since less than :data:`SENDING_HOLD`
leaves the send to the first. A row left ``sending`` longer (a worker killed around the
hand-off, or a transient failure) is sent again by the next attempt, with the same
deterministic Message-ID, which lets receiving servers drop a copy; a message the server
received but whose answer was lost is recorded as sent, never sent again.

Knows no dunning: callers (:mod:`worker.dunning.emails`) choose the email and its facts.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.email.i18n import html_lang
from worker.email.messages import EmailContext, EmailKind, build_message
from worker.email.models import Notification, NotificationStatus
from worker.email.sender import SMTP_TIMEOUT_SECONDS, OutgoingEmail, mask_email

# A hand-off takes a few SMTP round trips, each bounded by the timeout: a 'sending' row older
# than this was left by a worker that died (its email is sent again, same Message-ID).
SENDING_HOLD = timedelta(seconds=6 * SMTP_TIMEOUT_SECONDS)


def already_sent(session: Session, key: str) -> bool:
    """Sent (or refused for good) under ``key``: nothing more to do."""
    status = session.scalar(select(Notification.status).where(Notification.dedupe_key == key))
    return status in (NotificationStatus.SENT, NotificationStatus.FAILED)


def reserve(
    session: Session,
    kind: EmailKind,
    context: EmailContext,
    *,
    key: str,
    to: str,
    customer_id: int,
    case_id: int | None,
    from_address: str,
    now: datetime,
) -> OutgoingEmail | None:
    """Compose ``kind`` from ``context`` and reserve its send under ``key`` (the caller
    checked :func:`already_sent`): the row says ``sending`` until :func:`record`. None when a
    twin task started handing it over less than :data:`SENDING_HOLD` ago: the send is its."""
    row = session.scalars(
        select(Notification).where(Notification.dedupe_key == key).with_for_update()
    ).first()
    if row is None:
        row = Notification(
            dedupe_key=key,
            case_id=case_id,
            customer_id=customer_id,
            template=kind.value,
            to_masked=mask_email(to),
            status=NotificationStatus.SENDING,
            created_at=now,
        )
        session.add(row)
    elif row.sending_since is not None and now - row.sending_since < SENDING_HOLD:
        return None
    row.sending_since = now
    session.flush()  # claim the unique key now: a concurrent twin waits, then finds it
    message = build_message(kind, context)
    return OutgoingEmail(
        to=to,
        from_addr=from_address,
        subject=message.subject,
        text=message.text,
        html=message.html,
        message_id_key=key,
        language=html_lang(context.locale),
    )


def record(
    session: Session, key: str, status: NotificationStatus, *, now: datetime, error: str | None
) -> None:
    """The hand-off's outcome for the row :func:`reserve` wrote (``error``: masked text)."""
    row = session.scalars(
        select(Notification).where(Notification.dedupe_key == key).with_for_update()
    ).one()
    row.status, row.error = status, error
    if status is NotificationStatus.SENT:
        row.sent_at = now
