"""The languages customers read: gettext catalogs under ``templates/locale/``.

Every sentence of every email (and of the card-update pages) is a gettext message: templates
use Jinja's i18n extension (``{% trans %}``, ``_()``), Python marks its few sentences with
:func:`N_`, and Babel extracts them (``make i18n`` writes ``templates/locale/messages.pot`` and
merges it into each ``<locale>/LC_MESSAGES/messages.po``). The ``.po`` files are the source;
they are compiled with Babel when first needed, in memory, so no binary is committed and no
build step can be forgotten.

An email is in one locale for words, amounts and dates alike: :func:`email_locale` keeps the
customer's locale (Stripe's ``preferred_locales``) when its language has a catalog, and falls
back to the configured default otherwise (a Swedish customer gets the default's words and its
number format, never Swedish numbers inside English sentences).
"""

from __future__ import annotations

import io
from functools import lru_cache
from gettext import NullTranslations
from pathlib import Path

from babel import Locale
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

from worker.money import resolve_locale
from worker.resources import bundled

SOURCE_LANGUAGE = "en"  # msgids are English; "en" needs no catalog


def N_(message: str) -> str:
    """Mark ``message`` for extraction; it is translated where it is shown."""
    return message


def locale_dir() -> Path:
    return bundled("templates", "email") / "locale"


@lru_cache(maxsize=1)
def available() -> frozenset[str]:
    """Locales with a catalog, plus the source language: ``{"de", "pt_BR", ...}``."""
    found = {p.parent.parent.name for p in locale_dir().glob("*/LC_MESSAGES/messages.po")}
    return frozenset({SOURCE_LANGUAGE, *found})


def catalog_for(locale: str | Locale | None) -> str | None:
    """The catalog a locale reads: ``pt_BR`` for pt_BR, ``de`` for de_AT, ``pt_BR`` for
    pt_PT (the language, another region), None when we do not speak the language."""
    if not locale:
        return None
    parsed = resolve_locale(str(locale))
    if str(locale).replace("-", "_").split("_")[0].lower() != parsed.language:
        return None  # not a locale at all: resolve_locale fell back to its default
    for candidate in (str(parsed), parsed.language):
        if candidate in available():
            return candidate
    regional = sorted(name for name in available() if name.startswith(f"{parsed.language}_"))
    return regional[0] if regional else None


def email_locale(preferred: str | None, default: str) -> str:
    """The locale an email is written in: the first of the customer's preferred locales
    (Stripe's ``preferred_locales``, comma-separated, in order) whose language we speak,
    else ``default`` (``emails.default_locale``)."""
    for candidate in (preferred or "").split(","):
        if catalog_for(candidate.strip()) is not None:
            return str(resolve_locale(candidate.strip()))
    return str(resolve_locale(default))


@lru_cache(maxsize=32)
def translations(locale: str | None) -> NullTranslations:
    """Compiled translations for ``locale`` (the source language: none needed)."""
    name = catalog_for(locale)
    if name is None or name == SOURCE_LANGUAGE:
        return NullTranslations()
    path = locale_dir() / name / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as source:
        catalog = read_po(source, locale=name)
    compiled = io.BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return Translations(compiled)


def html_lang(locale: str | None) -> str:
    """The BCP 47 tag for ``<html lang>``: ``pt-BR``, ``de``..."""
    return str(resolve_locale(locale)).replace("_", "-")
