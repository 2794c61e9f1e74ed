"""A dunning email through the pipeline and a real SMTP server, in each language we ship:
chosen from the customer's Stripe preferred_locales, words, amount and header agreeing."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support.paths import START
from tests.support.pipeline import deliver, failed, run_claimed
from tests.support.smtp import smtp_server
from worker.billing.models import Customer
from worker.clock import ManualClock
from worker.config import Policy
from worker.dunning.models import ScheduledAction as Action
from worker.email.i18n import translations
from worker.money import format_money

# Stripe's preferred_locales as customers set them -> the locale the email is written in.
CASES = [
    ("de-DE", "de_DE", "de-DE"),
    ("fr-CA,en", "fr_CA", "fr-CA"),
    ("es", "es", "es"),
    ("it-IT", "it_IT", "it-IT"),
    ("nl-NL", "nl_NL", "nl-NL"),
    ("pt-BR", "pt_BR", "pt-BR"),
    ("ja", "ja", "ja"),
    ("sv-SE,it", "it", "it"),  # the first we speak
    ("sv-SE", "en_US", "en-US"),  # none: the default
]


@pytest.mark.parametrize(("preferred", "locale", "tag"), CASES)
def test_the_first_email_speaks_the_customers_language(
    session: Session,
    policy: Policy,
    manual_clock: ManualClock,
    preferred: str,
    locale: str,
    tag: str,
) -> None:
    deliver(session, policy, failed("in_lang", at=START), now=START)
    customer = session.scalars(select(Customer)).one()
    customer.email, customer.locale = "pat@example.test", preferred
    first = session.scalars(select(Action).where(Action.template == "payment_failed")).one()
    with smtp_server() as (mail, port):
        run_claimed(
            session, policy, "http://127.0.0.1:9", first, smtp_url=f"smtp://127.0.0.1:{port}"
        )
        (message,) = mail.messages
    expected = translations(locale).gettext("Your %(company)s payment didn't go through") % {
        "company": policy.emails.company_name
    }
    assert message["Subject"] == expected
    assert message["Content-Language"] == tag
    html = message.get_body(("html",)).get_content()
    assert f'<html lang="{tag}">' in html
    assert format_money(4900, "usd", locale) in message.get_body(("plain",)).get_content()
