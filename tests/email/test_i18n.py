"""Every email and card-update page in every language we ship: catalogs complete and in sync
with the templates, every template rendering in every locale with no English left, valid
HTML, amounts and dates in the same locale, and nothing threatening in any of them."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po

from tests.support.paths import REPO
from worker.email.i18n import available, catalog_for, email_locale, html_lang, translations
from worker.email.messages import EmailContext, EmailKind, OtherInvoice, build_message
from worker.email.render import format_localtime
from worker.links.pages import Page, render_page
from worker.money import format_money

LOCALE_DIR = REPO / "templates" / "locale"
SHIPPED = ("de", "fr", "es", "it", "nl", "pt_BR", "ja")
# A customer per catalog, with a region, as Stripe's preferred_locales give them.
CUSTOMER_LOCALES = {
    "en": "en_US",
    "de": "de_DE",
    "fr": "fr_FR",
    "es": "es_ES",
    "it": "it_IT",
    "nl": "nl_NL",
    "pt_BR": "pt_BR",
    "ja": "ja_JP",
}
PLACEHOLDER = re.compile(r"%\(\w+\)s")

FULL = EmailContext(
    customer_name="Jane Doe",
    amount_due=123456,
    currency="eur",
    locale="en_US",
    update_url="https://billing.example.com/u/k1.abc.def",
    invoice_number="INV-0001",
    product_name="Pro",
    decline_reason="insufficient_funds",
    next_attempt_at=datetime(2025, 3, 4, 8, 0, tzinfo=UTC),
    access_ends_at=datetime(2025, 3, 18, 8, 0, tzinfo=UTC),
    timezone="Europe/Berlin",
    company_name="Acme",
    support_email="help@acme.example",
    paid_with=("Mastercard", "4444"),
    other_invoices=(OtherInvoice("INV-0002", 2000, "eur"),),
)

# Words a friendly billing email never uses, by language: fraud, theft, lawyers, debt
# collection, legal steps.
THREATS = {
    "en": ("fraud", "stolen", "lawyer", "legal action", "debt collect", "collection agency"),
    "de": ("betrug", "gestohlen", "anwalt", "inkasso", "rechtliche schritte", "mahnverfahren"),
    "fr": ("fraude", "volée", "avocat", "recouvrement", "poursuites", "huissier"),
    "es": ("fraude", "robada", "abogado", "cobranza", "acciones legales", "recobro"),
    "it": ("frode", "rubata", "avvocato", "recupero crediti", "azioni legali"),
    "nl": ("fraude", "gestolen", "advocaat", "incassobureau", "juridische stappen"),
    "pt_BR": ("fraude", "roubado", "advogado", "cobrança judicial", "medidas legais"),
    "ja": ("詐欺", "盗難", "弁護士", "法的措置", "債権回収"),
}


def _catalog(path: Path, locale: str | None = None) -> Catalog:
    with path.open("rb") as source:
        return read_po(source, locale=locale)


def _ids(catalog: Catalog) -> set[str]:
    return {m.id if isinstance(m.id, str) else m.id[0] for m in catalog if m.id}


def test_we_ship_the_languages_customers_speak() -> None:
    assert available() == {"en", *SHIPPED}


def test_the_template_catalog_matches_what_the_code_says(tmp_path: Path) -> None:
    """``make i18n`` was run: extracting now gives messages.pot's messages exactly."""
    fresh = tmp_path / "messages.pot"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "babel.messages.frontend",
            "extract",
            "-F",
            "config/babel.cfg",
            "-k",
            "N_",
            "--ignore-dirs",
            ".* .venv __pycache__",
            "-o",
            str(fresh),
            ".",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    assert _ids(_catalog(fresh)) == _ids(_catalog(LOCALE_DIR / "messages.pot"))


@pytest.mark.parametrize("locale", SHIPPED)
def test_every_message_is_translated(locale: str) -> None:
    catalog = _catalog(LOCALE_DIR / locale / "LC_MESSAGES" / "messages.po", locale)
    assert _ids(catalog) == _ids(_catalog(LOCALE_DIR / "messages.pot"))
    for message in catalog:
        if not message.id:
            continue
        source = message.id if isinstance(message.id, str) else message.id[0]
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        assert not message.fuzzy, source
        for text in strings:
            assert text, f"{locale}: untranslated {source!r}"
            assert sorted(set(PLACEHOLDER.findall(text))) == sorted(
                set(PLACEHOLDER.findall(source))
            ), f"{locale}: placeholders differ in {source!r}"


class _Checker(HTMLParser):
    VOID = frozenset({"meta", "br", "img", "hr", "link", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.lang: str | None = None
        self.titles = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "html":
            self.lang = dict(attrs).get("lang")
        self.titles += tag == "title"
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()


def _valid_html(html: str, locale: str) -> None:
    checker = _Checker()
    checker.feed(html)
    checker.close()
    assert checker.errors == []
    assert checker.stack == []
    assert checker.lang == html_lang(locale)
    assert checker.titles == 1


def _english_fragments(locale: str) -> list[str]:
    """Pieces of English that must not survive in ``locale``: each message's text between
    placeholders, where the translation differs."""
    fragments = []
    for message in _catalog(LOCALE_DIR / "messages.pot"):
        if not message.id:
            continue
        source = message.id if isinstance(message.id, str) else message.id[0]
        if translations(locale).gettext(source) == source:
            continue
        fragments += [part.strip() for part in PLACEHOLDER.split(source) if len(part.strip()) > 12]
    return fragments


@pytest.mark.parametrize("catalog", sorted(CUSTOMER_LOCALES))
@pytest.mark.parametrize("kind", list(EmailKind))
def test_every_email_renders_in_every_locale(catalog: str, kind: EmailKind) -> None:
    locale = CUSTOMER_LOCALES[catalog]
    message = build_message(kind, replace(FULL, locale=locale))
    everything = f"{message.subject}\n{message.text}\n{message.html}"
    for fragment in _english_fragments(locale):
        assert fragment not in everything, f"{locale} {kind}: English left: {fragment!r}"
    _valid_html(message.html, locale)
    # Words, amounts and dates in one locale.
    assert format_money(123456, "eur", locale) in message.text
    if kind is EmailKind.REMINDER:
        assert format_localtime(FULL.next_attempt_at, "Europe/Berlin", locale) in message.text  # type: ignore[arg-type]
    if kind is EmailKind.FINAL_NOTICE:
        assert format_localtime(FULL.access_ends_at, "Europe/Berlin", locale) in message.text  # type: ignore[arg-type]
    lowered = everything.lower()
    for word in THREATS["en"] + THREATS[catalog]:
        assert word not in lowered, f"{locale} {kind}: {word!r}"


@pytest.mark.parametrize("catalog", sorted(CUSTOMER_LOCALES))
def test_a_fraud_decline_reads_as_a_plain_decline_in_every_language(catalog: str) -> None:
    locale = CUSTOMER_LOCALES[catalog]
    fraud = build_message(
        EmailKind.PAYMENT_FAILED, replace(FULL, locale=locale, decline_reason="stolen_card")
    )
    plain = build_message(
        EmailKind.PAYMENT_FAILED, replace(FULL, locale=locale, decline_reason="do_not_honor")
    )
    assert fraud == plain


@pytest.mark.parametrize("catalog", sorted(CUSTOMER_LOCALES))
@pytest.mark.parametrize("page", list(Page))
def test_every_card_update_page_renders_in_every_locale(catalog: str, page: Page) -> None:
    locale = CUSTOMER_LOCALES[catalog]
    _, html = render_page(
        page,
        pay_url="https://invoice.stripe.test/i/abc",
        support_email="help@acme.example",
        company_name="Acme",
        locale=locale,
    )
    _valid_html(html, locale)
    for fragment in _english_fragments(locale):
        assert fragment not in html, f"{locale} {page}: English left: {fragment!r}"


@pytest.mark.parametrize(
    ("preferred", "expected"),
    [
        ("de-AT", "de_AT"),  # German words, Austrian formats
        ("pt-BR", "pt_BR"),
        ("pt-PT", "pt_PT"),  # the pt_BR catalog, Portuguese formats
        ("sv-SE,fr-CA,en", "fr_CA"),  # the first preferred locale we speak
        ("sv-SE", "en_US"),  # none: the configured default, its words and formats
        ("", "en_US"),
        (None, "en_US"),
        ("not a locale", "en_US"),
        ("ja", "ja"),
    ],
)
def test_the_email_locale_follows_the_customers_preferences(
    preferred: str | None, expected: str
) -> None:
    assert email_locale(preferred, "en_US") == expected


def test_catalogs_for_regions_and_languages() -> None:
    assert catalog_for("pt_PT") == "pt_BR"
    assert catalog_for("de_CH") == "de"
    assert catalog_for("sv") is None
