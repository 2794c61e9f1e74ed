"""Sending a customer email once per dedupe key, with an outbox row that proves it.

The outbox row (``notifications.dedupe_key`` UNIQUE) is written in the same transaction that
hands the message to SMTP, and that transaction commits only after the server accepted it. A
failed hand-off rolls the row back and the task retries; a concurrent duplicate blocks on the
unique key and then finds the row. The one remaining window (killed after the server's 250,
before our commit) is covered by a deterministic Message-ID derived from the same key, which
lets receiving servers drop the copy.

Knows no dunning: callers (:mod:`worker.dunning.emails`) choose the email and its facts.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.email.messages import EmailContext, EmailKind, build_message
from worker.email.models import Notification, NotificationStatus
from worker.email.sender import OutgoingEmail, Sender, mask_email


def already_sent(session: Session, key: str) -> bool:
    return session.scalar(select(Notification.id).where(Notification.dedupe_key == key)) is not None


def send_once(
    session: Session,
    kind: EmailKind,
    context: EmailContext,
    *,
    key: str,
    to: str,
    customer_id: int,
    case_id: int | None,
    from_address: str,
    sender: Sender,
    now: datetime,
) -> str:
    """Compose ``kind`` from ``context`` and hand it to ``sender``, recorded under ``key``
    (the caller checked :func:`already_sent`); returns a note saying where it went."""
    message = build_message(kind, context)
    session.add(
        Notification(
            dedupe_key=key,
            case_id=case_id,
            customer_id=customer_id,
            template=kind.value,
            to_masked=mask_email(to),
            status=NotificationStatus.SENT,
            created_at=now,
            sent_at=now,
        )
    )
    session.flush()  # claim the unique key before the hand-off, inside this transaction
    sender.send(
        OutgoingEmail(
            to=to,
            from_addr=from_address,
            subject=message.subject,
            text=message.text,
            html=message.html,
            message_id_key=key,
        )
    )
    return f"sent to {mask_email(to)}"
