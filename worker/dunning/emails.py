"""Dunning's emails: preparing the email an action names with the facts of its case (amount,
decline, next retry, access end, the update link). Card-expiring notices are planned by
:mod:`worker.dunning.expiring`, which also says when one has gone stale.

Composing the message and sending it once per key is :mod:`worker.email.service`'s job.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.billing.models import Customer, Invoice
from worker.config import Policy
from worker.dunning import contact, expiring
from worker.dunning.cards import saved_card
from worker.dunning.models import ActionKind, ActionStatus, DunningCase, ScheduledAction
from worker.email import service as email
from worker.email.i18n import email_locale
from worker.email.messages import EmailContext, EmailKind, OtherInvoice
from worker.email.sender import OutgoingEmail
from worker.ledger.models import RecoveryMethod
from worker.links.service import link_for_email
from worker.settings import LinkKey

ALREADY_SENT = "already sent"


def prepare_action_email(
    session: Session,
    action: ScheduledAction,
    *,
    policy: Policy,
    public_url: str,
    link_keys: tuple[LinkKey, ...],
    now: datetime,
) -> OutgoingEmail | str | contact.Postpone | None:
    """The email ``action`` names, reserved for sending once (the caller hands it over
    after this transaction commits), a note saying why there is nothing to send, a
    :class:`~worker.dunning.contact.Postpone` when the customer's contact rules say later, or
    None while a twin task is handing it over. The caller holds the customer's contact lock
    (:func:`worker.dunning.contact.lock_contact`)."""
    if email.already_sent(session, action.idempotency_key):
        return ALREADY_SENT
    customer = session.get_one(Customer, action.customer_id)
    if not customer.email:
        return "skipped: the customer has no email address"
    if action.template == EmailKind.CARD_EXPIRING:
        stale = expiring.stale_notice(session, customer, action, policy=policy, now=now)
        if stale is not None:
            return stale
    verdict = contact.check(session, action, customer, policy=policy, now=now)
    if verdict is not None:
        return verdict
    others = contact.ride_along(session, action, now=now)
    context = _context(
        session,
        action,
        customer,
        policy=policy,
        public_url=public_url,
        link_keys=link_keys,
        now=now,
        others=others,
    )
    return email.reserve(
        session,
        EmailKind(action.template or ""),
        context,
        key=action.idempotency_key,
        to=customer.email,
        customer_id=customer.id,
        case_id=action.case_id,
        from_address=policy.emails.from_address,
        now=now,
    )


def _context(
    session: Session,
    action: ScheduledAction,
    customer: Customer,
    *,
    policy: Policy,
    public_url: str,
    link_keys: tuple[LinkKey, ...],
    now: datetime,
    others: tuple[OtherInvoice, ...] = (),
) -> EmailContext:
    case = session.get(DunningCase, action.case_id) if action.case_id else None
    # The invoice in question, or for a card-expiring notice the customer's latest one (what
    # the next renewal will likely charge).
    invoice = (
        session.get(Invoice, case.invoice_id)
        if case
        else session.scalars(
            select(Invoice).where(Invoice.customer_id == customer.id).order_by(Invoice.id.desc())
        ).first()
    )
    next_retry = None
    if case is not None:
        next_retry = session.scalar(
            select(ScheduledAction.due_at)
            .where(
                ScheduledAction.case_id == case.id,
                ScheduledAction.kind == ActionKind.RETRY_PAYMENT,
                ScheduledAction.status == ActionStatus.PLANNED,
            )
            .order_by(ScheduledAction.due_at)
        )
    # Our signed one-click link (a fresh portal session on click) in every email that asks
    # for something; without link keys, the invoice's hosted page (it also takes a new card
    # and handles 3-D Secure).
    link = None
    if action.template != EmailKind.PAYMENT_RECOVERED:
        link = link_for_email(
            session,
            link_keys,
            public_url=public_url,
            issued_for=action.idempotency_key,
            customer_id=customer.id,
            invoice_id=invoice.id if case and invoice else None,
            lifetime=timedelta(days=policy.emails.link_lifetime_days),
            now=now,
        )
    update_url = link or (invoice.hosted_invoice_url if case and invoice else None) or public_url
    return EmailContext(
        customer_name=customer.name,
        amount_due=invoice.amount_due if invoice else 0,
        currency=invoice.currency if invoice else "usd",
        locale=email_locale(customer.locale, policy.emails.default_locale),
        update_url=update_url,
        invoice_number=invoice.number if invoice and case else None,
        product_name=None,
        decline_reason=case.decline_code if case else None,
        next_attempt_at=next_retry,
        access_ends_at=case.window_ends_at if case else None,
        timezone=customer.timezone or policy.emails.default_timezone,
        company_name=policy.emails.company_name,
        support_email=policy.emails.support_email,
        paid_with=_backup_that_paid(session, case) if case else None,
        other_invoices=others,
    )


def _backup_that_paid(session: Session, case: DunningCase) -> tuple[str, str] | None:
    """The backup card that recovered ``case`` (brand name, last four), or None."""
    if case.recovered_method is not RecoveryMethod.BACKUP_METHOD:
        return None
    paid = session.scalar(
        select(ScheduledAction.payment_method).where(
            ScheduledAction.case_id == case.id,
            ScheduledAction.recovery_method == RecoveryMethod.BACKUP_METHOD,
            ScheduledAction.status == ActionStatus.DONE,
        )
    )
    card = saved_card(session, paid) if paid else None
    if card is None:
        return None
    brand = _BRAND_NAMES.get(card.brand or "", (card.brand or "card").replace("_", " ").title())
    return brand, card.last4 or "····"


_BRAND_NAMES = {
    "amex": "American Express",
    "jcb": "JCB",
    "unionpay": "UnionPay",
    "diners": "Diners Club",
    "cartes_bancaires": "Cartes Bancaires",
}
