"""Card-expiry notices by expiry month: cards warned about, notices sent, and how many were
updated before they expired (by the customer, or renewed by the network) against how many
expired unchanged. Read from ``card_expiry_notices`` and the email outbox."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.dunning.cards import expiry_end
from worker.dunning.models import CardExpiryNotice
from worker.email.models import Notification, NotificationStatus

# Field -> the table's header (JSON uses the field names).
CARD_COLUMNS = {
    "expires": "expires",
    "cards": "cards",
    "notices_sent": "sent",
    "updated_before_expiry": "updated in time",
    "by_customer": "by customer",
    "by_network": "by network",
    "expired_unchanged": "expired",
    "not_yet_expired": "not yet",
}


@dataclass
class CardNoticeRow:
    expires: str  # YYYY-MM
    cards: int = 0  # cards warned about (a notice was planned)
    notices_sent: int = 0
    updated_before_expiry: int = 0
    by_customer: int = 0
    by_network: int = 0
    expired_unchanged: int = 0  # the month ended before the card was replaced or renewed
    not_yet_expired: int = 0  # still open, the month is not over

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def card_notice_report(
    session: Session, first: str, last: str, *, now: datetime
) -> list[CardNoticeRow]:
    """One row per expiry month from ``first`` to ``last`` (``YYYY-MM``, inclusive)."""
    notices = session.scalars(
        select(CardExpiryNotice)
        .where(CardExpiryNotice.expires >= first, CardExpiryNotice.expires <= last)
        .order_by(CardExpiryNotice.expires)
    ).all()
    sent_keys = session.scalars(
        select(Notification.dedupe_key).where(
            Notification.template == "card_expiring",
            Notification.status == NotificationStatus.SENT,
        )
    ).all()
    rows: dict[str, CardNoticeRow] = {}
    for notice in notices:
        row = rows.setdefault(notice.expires, CardNoticeRow(notice.expires))
        row.cards += 1
        prefix = f"customer:{notice.customer_id}:card-expiring:{notice.payment_method}:"
        row.notices_sent += sum(
            1 for key in sent_keys if key.startswith(prefix + notice.expires + ":")
        )
        year, month = (int(part) for part in notice.expires.split("-"))
        ends = expiry_end(year, month)
        if notice.replaced_at is not None and notice.replaced_at < ends:
            row.updated_before_expiry += 1
            if notice.replaced_by == "network":
                row.by_network += 1
            else:
                row.by_customer += 1
        elif now >= ends:
            row.expired_unchanged += 1
        else:
            row.not_yet_expired += 1
    return list(rows.values())
