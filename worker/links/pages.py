"""The pages a customer sees at ``/u/<token>`` when the link does not lead to the portal.

Every page says what happened in plain words, in the customer's language, and offers a way
forward: the invoice's own secure payment page when it is still open (never for a revoked
link), and the support address. Nothing from the request is echoed; the template is
autoescaped.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

import jinja2

from worker.email.i18n import N_
from worker.email.render import default_templates_dir, make_environment


class Page(StrEnum):
    PAID = "paid"
    EXPIRED = "expired"
    REVOKED = "revoked"
    INVALID = "invalid"
    UNAVAILABLE = "unavailable"
    DONE = "done"  # back from the portal


@dataclass(frozen=True)
class _Text:
    status: int
    title: str
    message: str


_PAGES = {
    Page.PAID: _Text(
        200,
        N_("Nothing to do"),
        N_("This invoice is paid. Thank you, there's nothing more you need to do."),
    ),
    Page.EXPIRED: _Text(
        410,
        N_("This link has expired"),
        N_("For your security, card-update links only work for a limited time."),
    ),
    Page.REVOKED: _Text(
        410,
        N_("This link no longer works"),
        N_("For your security, this link was switched off. Our most recent email has a new one."),
    ),
    Page.INVALID: _Text(
        400,
        N_("We couldn't open this link"),
        N_("The link may be incomplete. Please use the button in our most recent email."),
    ),
    Page.UNAVAILABLE: _Text(
        503,
        N_("The billing page is taking a break"),
        N_("We couldn't open your billing page just now. Please try again in a few minutes."),
    ),
    Page.DONE: _Text(
        200,
        N_("Thank you"),
        N_(
            "If you updated your card, we'll try the payment again in the next few minutes. "
            "There's nothing else you need to do."
        ),
    ),
}


def render_page(
    page: Page,
    *,
    pay_url: str | None,
    support_email: str,
    company_name: str,
    locale: str,
) -> tuple[int, str]:
    """The HTTP status and the HTML of ``page``, in ``locale`` (the customer's when the link
    tells us, see :func:`worker.email.i18n.email_locale`)."""
    text = _PAGES[page]
    template = _environment().get_template("pages/link.html")
    html = template.render(
        locale=locale,
        title=text.title,
        message=text.message,
        pay_url=pay_url,
        support_email=support_email,
        company_name=company_name,
    )
    return text.status, html


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return make_environment(default_templates_dir())
