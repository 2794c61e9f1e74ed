"""Each email rendered from the real templates: amounts, links, wording, escaping, time zones."""

from __future__ import annotations

import html
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import jinja2
import pytest

from worker.email.messages import (
    GENERIC_DECLINE,
    EmailContext,
    EmailKind,
    build_context,
    build_message,
    explain_decline,
)
from worker.email.render import format_localtime, make_environment, render
from worker.money import format_money

UPDATE_URL = "https://billing.example.com/u/tok_123?source=email&step=1"
BASE = EmailContext(
    customer_name="Jane Doe",
    amount_due=4900,
    currency="usd",
    locale="en_US",
    update_url=UPDATE_URL,
    invoice_number="INV-0042",
    product_name="Pro plan",
    decline_reason="insufficient_funds",
    next_attempt_at=datetime(2025, 3, 4, 8, 0, tzinfo=UTC),
    access_ends_at=datetime(2025, 3, 18, 8, 0, tzinfo=UTC),
    timezone="America/New_York",
    company_name="Acme",
    support_email="help@acme.example",
)
ASKING = [kind for kind in EmailKind if kind is not EmailKind.PAYMENT_RECOVERED]
WITH_REASON = [EmailKind.PAYMENT_FAILED, EmailKind.REMINDER, EmailKind.FINAL_NOTICE]
FRAUD_CODES = [
    "fraudulent",
    "stolen_card",
    "lost_card",
    "pickup_card",
    "merchant_blacklist",
    "security_violation",
    "highest_risk_level",
    "elevated_risk_level",
    "previously_declined_do_not_retry",
]


def nbsp(text: str) -> str:
    """CLDR puts no-break spaces inside amounts and times; compare with plain ones."""
    return text.replace("\u00a0", " ").replace("\u202f", " ")


@pytest.mark.parametrize("kind", list(EmailKind))
def test_amount_in_both_parts(kind: EmailKind) -> None:
    message = build_message(kind, BASE)
    assert "$49.00" in message.text
    assert "$49.00" in message.html
    assert "Acme" in message.text
    assert "help@acme.example" in message.html


@pytest.mark.parametrize("kind", list(EmailKind))
def test_plain_text_reads_on_its_own(kind: EmailKind) -> None:
    for ctx in (BASE, replace(BASE, customer_name=None, product_name=None, invoice_number=None)):
        text = build_message(kind, ctx).text
        assert text.startswith("Hi ")
        assert "\n\n\n" not in text
        assert all(line == line.rstrip() for line in text.splitlines())
        assert "<" not in text  # no markup leaks into the plain part
        assert "help@acme.example" in text


@pytest.mark.parametrize("kind", ASKING)
def test_one_click_link_in_both_parts(kind: EmailKind) -> None:
    message = build_message(kind, BASE)
    assert f"\n{UPDATE_URL}\n" in message.text  # on its own line, so clients make it a link
    assert f'href="{html.escape(UPDATE_URL)}"' in message.html


def test_thank_you_needs_no_link() -> None:
    message = build_message(EmailKind.PAYMENT_RECOVERED, replace(BASE, update_url=""))
    assert "Thank you" in message.subject + message.text
    assert 'href="https://' not in message.html


def test_asking_without_a_link_is_refused() -> None:
    with pytest.raises(ValueError, match="update_url"):
        build_message(EmailKind.PAYMENT_FAILED, replace(BASE, update_url=""))


@pytest.mark.parametrize("kind", list(EmailKind))
def test_german_locale_formats_euros(kind: EmailKind) -> None:
    message = build_message(kind, replace(BASE, currency="EUR", locale="de_DE"))
    assert "49,00 €" in nbsp(message.text)
    assert "49,00 €" in nbsp(message.html)


@pytest.mark.parametrize("kind", list(EmailKind))
def test_yen_has_no_decimals(kind: EmailKind) -> None:
    message = build_message(kind, replace(BASE, currency="jpy"))
    assert "¥4,900" in message.text
    assert "¥4,900" in message.html
    assert "4,900.00" not in message.text
    assert "¥49" not in message.text.replace("¥4,900", "")


@pytest.mark.parametrize(
    ("amount", "currency", "locale", "expected"),
    [
        (4900, "eur", "de_DE", "49,00 €"),
        (4900, "eur", "fr_FR", "49,00 €"),
        (4900, "jpy", "de_DE", "4.900 ¥"),
        (12345, "kwd", "en_US", "KWD12.345"),
        (10000, "isk", "en_US", "ISK100"),  # Stripe keeps ISK two-decimal on the wire
        (1, "usd", "en_US", "$0.01"),
        (4900, "usd", "klingon", "$49.00"),  # unknown locale -> en_US
        (4900, "usd", "", "$49.00"),
        (4900, "chf", "de-CH", "CHF 49.00"),
    ],
)
def test_money(amount: int, currency: str, locale: str, expected: str) -> None:
    assert nbsp(format_money(amount, currency, locale)) == expected


def test_money_refuses_a_non_currency() -> None:
    with pytest.raises(ValueError, match="currency"):
        format_money(100, "dollars", "en_US")


@pytest.mark.parametrize("code", FRAUD_CODES)
@pytest.mark.parametrize("kind", list(EmailKind))
def test_fraud_reason_never_shown(kind: EmailKind, code: str) -> None:
    message = build_message(kind, replace(BASE, decline_reason=code))
    for part in (message.subject, message.text, message.html):
        assert code not in part
        assert code.replace("_", " ") not in part.lower()
        for word in ("fraud", "stolen", "lost", "risk", "blacklist", "security violation"):
            assert word not in part.lower()
    if kind in WITH_REASON:
        assert GENERIC_DECLINE in message.text
        assert GENERIC_DECLINE in message.html


@pytest.mark.parametrize("code", [*FRAUD_CODES, None, "", "do_not_honor", "something_new"])
def test_unreviewed_codes_read_generic(code: str | None) -> None:
    assert explain_decline(code) == GENERIC_DECLINE


def test_known_reasons_in_plain_words() -> None:
    message = build_message(EmailKind.PAYMENT_FAILED, BASE)
    assert "balance or credit limit" in message.text
    assert "insufficient_funds" not in message.text + message.html
    assert "had expired" in explain_decline("EXPIRED_CARD")


@pytest.mark.parametrize("kind", list(EmailKind))
def test_hostile_names_are_escaped_in_html(kind: EmailKind) -> None:
    hostile = replace(
        BASE,
        customer_name='<script>alert("x")</script>',
        product_name="<img src=x onerror=alert(1)>",
        company_name="Acme & Sons",
    )
    message = build_message(kind, hostile)
    assert "<script>" not in message.html
    assert "&lt;script&gt;" in message.html
    assert "<img" not in message.html
    assert "Acme &amp; Sons" in message.html
    assert '<script>alert("x")</script>' in message.text  # plain text is not HTML-escaped


def test_name_cannot_add_lines() -> None:
    message = build_message(
        EmailKind.PAYMENT_FAILED, replace(BASE, customer_name="Jane\n\nClick evil.example")
    )
    assert message.text.startswith("Hi Jane Click evil.example,\n")


def test_greeting_without_a_name() -> None:
    message = build_message(EmailKind.PAYMENT_FAILED, replace(BASE, customer_name=None))
    assert message.text.startswith("Hi there,\n")


def test_html_declares_its_language_and_title() -> None:
    message = build_message(EmailKind.REMINDER, BASE)
    assert '<html lang="en-US">' in message.html  # the email's locale (BASE: en_US)
    assert f"<title>{html.escape(message.subject)}</title>" in message.html


def test_reminder_names_the_next_try_in_the_customers_time() -> None:
    late_evening_utc = datetime(2025, 3, 4, 23, 30, tzinfo=UTC)
    ctx = replace(BASE, next_attempt_at=late_evening_utc, timezone="Asia/Tokyo")
    message = build_message(EmailKind.REMINDER, ctx)
    expected = "We'll try again on Wednesday, March 5, 2025, 8:30 AM"
    assert expected in nbsp(message.text)
    assert "Wednesday, March 5, 2025" in message.html
    assert "11:30" not in message.text


def test_reminder_in_german() -> None:
    ctx = replace(BASE, locale="de_DE", currency="eur", timezone="Europe/Berlin")
    message = build_message(EmailKind.REMINDER, ctx)
    assert "Dienstag, 4. März 2025, 09:00 MEZ" in nbsp(message.text)


def test_reminder_without_a_planned_try() -> None:
    message = build_message(EmailKind.REMINDER, replace(BASE, next_attempt_at=None))
    assert "try again on" not in message.text
    assert "As soon as you update your payment details" in message.text


def test_final_notice_names_the_end_of_access() -> None:
    message = build_message(EmailKind.FINAL_NOTICE, BASE)
    assert "Tuesday, March 18, 2025, 4:00 AM EDT" in nbsp(message.text)
    without = build_message(EmailKind.FINAL_NOTICE, replace(BASE, access_ends_at=None))
    assert "last reminder" in without.text


def test_action_required_explains_the_bank_check() -> None:
    message = build_message(EmailKind.ACTION_REQUIRED, BASE)
    assert "confirm" in message.subject.lower()
    assert "3D Secure" in message.text
    assert "Confirm your payment" in message.html


def test_unknown_timezone_falls_back_to_utc() -> None:
    when = datetime(2025, 3, 4, 8, 0, tzinfo=UTC)
    assert nbsp(format_localtime(when, "Mars/Olympus", "en_US")).endswith("8:00 AM UTC")
    assert format_localtime(when, "Europe/Berlin", "fr_FR", date_only=True) == "mardi 4 mars 2025"


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        replace(BASE, next_attempt_at=datetime(2025, 3, 4, 8, 0))
    with pytest.raises(ValueError, match="aware"):
        format_localtime(datetime(2025, 3, 4, 8, 0), "UTC", "en_US")


@pytest.mark.parametrize("url", ["javascript:alert(1)", "data:text/html,x", "//evil.example"])
def test_link_must_be_http(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        replace(BASE, update_url=url)


def test_amount_must_be_minor_units() -> None:
    with pytest.raises(TypeError, match="minor units"):
        build_message(EmailKind.PAYMENT_FAILED, replace(BASE, amount_due=49.0))  # type: ignore[arg-type]


def test_context_carries_no_raw_decline_code() -> None:
    for kind in EmailKind:
        context = build_context(kind, replace(BASE, decline_reason="stolen_card"))
        assert "stolen_card" not in context.values()
        assert "decline_reason" not in context


def test_undefined_variables_fail_loudly(tmp_path: Path) -> None:
    folder = tmp_path / "email" / "typo"
    folder.mkdir(parents=True)
    for name in ("subject.txt", "body.txt", "body.html"):
        (folder / name).write_text("{{ amount_duee }}")
    with pytest.raises(jinja2.UndefinedError):
        render(make_environment(tmp_path), "typo", {"amount_due": 1})
