"""``dunning emails preview``: one email rendered with sample facts, as a customer would get it.

The sample is fixed and fictional (no customer data is read), in the policy's company name
and support address, so ops can review wording, languages and layout before a change ships.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from worker.email.i18n import available
from worker.email.messages import EmailContext, EmailKind, OtherInvoice, build_message
from worker.email.render import RenderedEmail

_SAMPLE = EmailContext(
    customer_name="Jane Doe",
    amount_due=4900,
    currency="usd",
    locale="en_US",
    update_url="https://billing.example.com/u/sample.token.preview",
    invoice_number="INV-0042",
    product_name="Pro plan",
    decline_reason="insufficient_funds",
    next_attempt_at=datetime(2026, 3, 5, 15, tzinfo=UTC),  # 10:00 in New York
    access_ends_at=datetime(2026, 3, 16, 14, tzinfo=UTC),
    timezone="America/New_York",
    company_name="Example SaaS",
    support_email="support@example.com",
)


class UnknownTemplateError(ValueError):
    pass


def preview(
    template: str,
    *,
    locale: str,
    company_name: str,
    support_email: str,
    other_invoices: bool = False,
) -> RenderedEmail:
    """``template`` (an :class:`EmailKind` value) rendered in ``locale`` with the sample;
    ``other_invoices`` adds a second unpaid invoice, as when one email covers two."""
    try:
        kind = EmailKind(template)
    except ValueError:
        names = ", ".join(k.value for k in EmailKind)
        raise UnknownTemplateError(f"unknown template {template!r} ({names})") from None
    ctx = replace(
        _SAMPLE,
        locale=locale,
        company_name=company_name,
        support_email=support_email,
        paid_with=("Visa", "4242") if kind is EmailKind.PAYMENT_RECOVERED else None,
        other_invoices=(OtherInvoice("INV-0043", 1500, "usd"),) if other_invoices else (),
    )
    return build_message(kind, ctx)


def locales() -> list[str]:
    """The languages the emails ship in."""
    return sorted(available())
