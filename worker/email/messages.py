"""What each dunning email says: the context model and one small function per email.

Owns ``EmailKind`` (one per directory under ``templates/email/``), ``EmailContext`` (the facts
a caller hands over), the plain-words explanation of a decline, and ``build_message``. Each
``@email(kind)`` function returns only the template context; rendering is
``worker.email.render``'s job and delivery ``worker.email.sender``'s.

The raw decline code never reaches a template. Explanations come from an allowlist, so a fraud
signal (``fraudulent``, ``stolen_card``, ``lost_card``, ``pickup_card``, ``merchant_blacklist``,
``security_violation``, ``highest_risk_level``, ...) and any code we have not reviewed read as
the generic "your bank declined the payment", as Stripe asks
(https://docs.stripe.com/declines/codes: "present as generic_decline").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from urllib.parse import urlsplit

import jinja2

from worker.email.i18n import N_
from worker.email.render import RenderedEmail, default_templates_dir, make_environment, render

ContextBuilder = Callable[["EmailContext"], dict[str, object]]


class EmailKind(StrEnum):
    PAYMENT_FAILED = "payment_failed"
    REMINDER = "reminder"
    FINAL_NOTICE = "final_notice"
    ACTION_REQUIRED = "action_required"
    CARD_EXPIRING = "card_expiring"
    PAYMENT_RECOVERED = "payment_recovered"


GENERIC_DECLINE = N_("your bank declined the payment")

_FUNDS = N_("your bank reported that the card's available balance or credit limit wasn't enough")
_DETAILS = N_("some of the card details we have on file didn't match what your bank expected")
_CONFIRM = N_("your bank asked you to confirm the payment")
_TEMPORARY = N_("your bank couldn't process the payment at that moment")
_DECLINE_EXPLANATIONS: dict[str, str] = {
    "insufficient_funds": _FUNDS,
    "card_velocity_exceeded": _FUNDS,
    "withdrawal_count_limit_exceeded": _FUNDS,
    "expired_card": N_("the card we have on file had expired"),
    "incorrect_cvc": _DETAILS,
    "invalid_cvc": _DETAILS,
    "invalid_expiry_month": _DETAILS,
    "invalid_expiry_year": _DETAILS,
    "incorrect_zip": _DETAILS,
    "incorrect_address": _DETAILS,
    "incorrect_number": _DETAILS,
    "invalid_number": _DETAILS,
    "authentication_required": _CONFIRM,
    "authentication_not_handled": _CONFIRM,
    "payment_intent_authentication_failure": _CONFIRM,
    "payment_intent_action_required": _CONFIRM,
    "processing_error": _TEMPORARY,
    "issuer_not_available": _TEMPORARY,
    "reenter_transaction": _TEMPORARY,
    "try_again_later": _TEMPORARY,
    "card_not_supported": N_("the card can't be used for this kind of payment"),
    "currency_not_supported": N_("the card can't be used for payments in this currency"),
}


def explain_decline(code: str | None) -> str:
    """Plain words for a decline code; anything not reviewed (fraud included) reads generic."""
    return _DECLINE_EXPLANATIONS.get((code or "").strip().lower(), GENERIC_DECLINE)


@dataclass(frozen=True)
class OtherInvoice:
    """Another unpaid invoice of the customer that one dunning email also covers."""

    number: str | None
    amount_due: int  # minor units
    currency: str


@dataclass(frozen=True)
class EmailContext:
    customer_name: str | None
    amount_due: int  # minor units
    currency: str  # ISO 4217, any case
    locale: str  # unknown -> en_US (see worker.money.resolve_locale)
    update_url: str
    invoice_number: str | None
    product_name: str | None
    decline_reason: str | None  # raw decline code; never shown, see explain_decline
    next_attempt_at: datetime | None  # aware UTC
    access_ends_at: datetime | None  # aware UTC
    timezone: str  # IANA; unknown -> UTC
    company_name: str
    support_email: str
    # The saved card that paid when it was not the usual one: (brand name, last four).
    paid_with: tuple[str, str] | None = None
    # Other unpaid invoices this email is also about (one email for several invoices).
    other_invoices: tuple[OtherInvoice, ...] = ()

    def __post_init__(self) -> None:
        if self.update_url and urlsplit(self.update_url).scheme not in {"https", "http"}:
            msg = "update_url must be an http(s) URL"  # it ends up in an href
            raise ValueError(msg)
        for name in ("next_attempt_at", "access_ends_at"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                msg = f"{name} must be timezone-aware"
                raise ValueError(msg)


_BUILDERS: dict[EmailKind, ContextBuilder] = {}


def email(kind: EmailKind) -> Callable[[ContextBuilder], ContextBuilder]:
    """Register the context function for ``templates/email/<kind>/``."""

    def register(fn: ContextBuilder) -> ContextBuilder:
        _BUILDERS[kind] = fn
        return fn

    return register


def registered_kinds() -> frozenset[EmailKind]:
    return frozenset(_BUILDERS)


def build_context(kind: EmailKind, ctx: EmailContext) -> dict[str, object]:
    return _BUILDERS[kind](ctx)


def build_message(kind: EmailKind, ctx: EmailContext) -> RenderedEmail:
    return render(_environment(), kind.value, build_context(kind, ctx))


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return make_environment(default_templates_dir())


def _one_line(value: str | None) -> str | None:
    """Customer-supplied names go into greetings; keep them from adding lines of their own."""
    joined = " ".join((value or "").split())
    return joined or None


def _common(ctx: EmailContext) -> dict[str, object]:
    return {
        "customer_name": _one_line(ctx.customer_name),
        "amount_due": ctx.amount_due,
        "currency": ctx.currency,
        "locale": ctx.locale,
        "timezone": ctx.timezone,
        "invoice_number": ctx.invoice_number,
        "product_name": _one_line(ctx.product_name),
        "company_name": ctx.company_name,
        "support_email": ctx.support_email,
        "other_invoices": ctx.other_invoices,
    }


def _dunning(ctx: EmailContext) -> dict[str, object]:
    """Every email that asks for something carries the one-click link."""
    if not ctx.update_url:
        msg = "update_url is required for a dunning email"
        raise ValueError(msg)
    return {**_common(ctx), "update_url": ctx.update_url}


@email(EmailKind.PAYMENT_FAILED)
def payment_failed(ctx: EmailContext) -> dict[str, object]:
    return {**_dunning(ctx), "decline_explanation": explain_decline(ctx.decline_reason)}


@email(EmailKind.REMINDER)
def reminder(ctx: EmailContext) -> dict[str, object]:
    return {
        **_dunning(ctx),
        "decline_explanation": explain_decline(ctx.decline_reason),
        "next_attempt_at": ctx.next_attempt_at,
    }


@email(EmailKind.FINAL_NOTICE)
def final_notice(ctx: EmailContext) -> dict[str, object]:
    return {
        **_dunning(ctx),
        "decline_explanation": explain_decline(ctx.decline_reason),
        "access_ends_at": ctx.access_ends_at,
    }


@email(EmailKind.ACTION_REQUIRED)
def action_required(ctx: EmailContext) -> dict[str, object]:
    return _dunning(ctx)


@email(EmailKind.CARD_EXPIRING)
def card_expiring(ctx: EmailContext) -> dict[str, object]:
    return _dunning(ctx)


@email(EmailKind.PAYMENT_RECOVERED)
def payment_recovered(ctx: EmailContext) -> dict[str, object]:
    return {**_common(ctx), "paid_with": ctx.paid_with}
