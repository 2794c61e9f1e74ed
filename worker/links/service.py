"""Issuing, opening and revoking card-update links.

An email that asks for something gets its link when it is composed (:func:`link_for_email`,
inside the transaction that reserves the email), so the link row exists before the email
does. Opening a link (:func:`open_link`) tells the intake what to show: the billing portal, a
"nothing to do" page when the invoice it was about is paid, or, for an expired link, the
invoice's own hosted page as a fresh way to pay (a revoked link offers only the support
address: it was switched off for a reason). Revoking (:func:`revoke_customer`) ends every
link a customer holds at once, e.g. when a mailbox was compromised.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from worker.billing.models import Customer, Invoice, by_provider_id
from worker.billing.stripe_client import ProviderError, StripeGateway, TransientProviderError
from worker.links import tokens
from worker.links.models import UpdateLink
from worker.settings import LinkKey


class LinkState(StrEnum):
    OPEN = "open"  # send the customer to the portal
    PAID = "paid"  # the invoice the email was about is paid: nothing left to do
    EXPIRED = "expired"
    REVOKED = "revoked"
    INVALID = "invalid"  # not ours, tampered with, or signed by a key we dropped


@dataclass(frozen=True)
class OpenedLink:
    state: LinkState
    customer: str | None = None  # the provider's customer id, for the portal call only
    pay_url: str | None = None  # the open invoice's hosted page: another way to pay
    locale: str | None = None


def link_for_email(
    session: Session,
    keys: tuple[LinkKey, ...],
    *,
    public_url: str,
    issued_for: str,
    customer_id: int,
    invoice_id: int | None,
    lifetime: timedelta,
    now: datetime,
) -> str | None:
    """The URL of the link the email keyed ``issued_for`` carries (the same one when it is
    composed again), or None when no link keys are configured."""
    if not keys:
        return None
    row = session.scalar(select(UpdateLink).where(UpdateLink.issued_for == issued_for))
    if row is None:
        row = UpdateLink(
            link_id=tokens.new_link_id(),
            issued_for=issued_for,
            customer_id=customer_id,
            invoice_id=invoice_id,
            created_at=now,
            expires_at=now + lifetime,
            open_count=0,
        )
        session.add(row)
        session.flush()
    return f"{public_url}/u/{tokens.sign(keys[0], row.link_id)}"


def open_link(
    session: Session, keys: tuple[LinkKey, ...], token: str, *, now: datetime
) -> OpenedLink:
    """What a click on ``token`` leads to; an open link counts the click."""
    try:
        link_id = tokens.link_id_of(keys, token)
    except tokens.BadLinkError:
        return OpenedLink(LinkState.INVALID)
    row = session.scalar(select(UpdateLink).where(UpdateLink.link_id == link_id).with_for_update())
    if row is None:
        return OpenedLink(LinkState.INVALID)
    customer = session.get_one(Customer, row.customer_id)
    invoice = session.get(Invoice, row.invoice_id) if row.invoice_id else None
    pay_url = invoice.hosted_invoice_url if invoice and invoice.status == "open" else None
    found = OpenedLink(LinkState.OPEN, customer.provider_id, pay_url, customer.locale)
    if row.revoked_at is not None:  # revoked for a reason (a mailbox compromised): no way in
        return OpenedLink(LinkState.REVOKED, None, None, customer.locale)
    if invoice is not None and invoice.status == "paid":
        return OpenedLink(LinkState.PAID, None, None, customer.locale)
    if now >= row.expires_at:
        return OpenedLink(LinkState.EXPIRED, None, pay_url, customer.locale)
    row.open_count += 1
    row.first_opened_at = row.first_opened_at or now
    return found


def revoke_customer(session: Session, customer_provider_id: str, *, now: datetime) -> int:
    """End every live link of the customer; the number ended. Raises LookupError for a
    customer we do not know."""
    customer_id = session.scalar(
        select(Customer.id).where(by_provider_id(Customer, customer_provider_id))
    )
    if customer_id is None:
        msg = f"no customer {customer_provider_id}"
        raise LookupError(msg)
    result = session.execute(
        update(UpdateLink)
        .where(
            UpdateLink.customer_id == customer_id,
            UpdateLink.revoked_at.is_(None),
            UpdateLink.expires_at > now,
        )
        .values(revoked_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def destination(gateway: StripeGateway, opened: OpenedLink, *, return_url: str) -> str | None:
    """Where an open link sends the customer: a fresh portal session straight to updating the
    payment method; a plain portal session when the account's portal turns that flow off; the
    invoice's hosted page when the portal is off altogether; None when nothing can be opened."""
    if opened.customer is not None:
        for flow in (True, False):
            try:
                return gateway.portal_url(opened.customer, return_url=return_url, flow=flow)
            except ProviderError:
                continue  # refused: try the next way
            except TransientProviderError:
                break  # Stripe's API is unreachable now; its hosted pages may not be
    return opened.pay_url
