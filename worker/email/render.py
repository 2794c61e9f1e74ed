"""Turns an email directory under ``templates/email/`` into subject, text and HTML.

Owns the Jinja environment (where templates live, escaping, strictness) and the two
locale-aware filters templates use for money and times. It does not know which emails exist or
what goes into their context (``worker.email.messages``), nor how they are delivered
(``worker.email.sender``).

Filters read ``locale`` and ``timezone`` from the template context, so a template writes
``{{ amount_due|money(currency) }}`` and ``{{ next_attempt_at|localtime }}``. An unknown
locale falls back to ``en_US`` and an unknown timezone to UTC: a slightly foreign format beats
an email that never goes out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from babel.dates import format_date, format_time, get_datetime_format

from worker.email.i18n import html_lang, translations
from worker.money import format_money, resolve_locale
from worker.resources import bundled

FALLBACK_TIMEZONE = "UTC"


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


def default_templates_dir() -> Path:
    """The repository's ``templates/``, or the copy a wheel build puts in ``worker/_templates``."""
    return bundled("templates", "email")


def make_environment(templates_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        extensions=["jinja2.ext.i18n"],
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,  # a misspelt variable fails the render, not the reader
    )
    env.filters["money"] = _money_filter
    env.filters["localtime"] = _localtime_filter
    env.filters["html_lang"] = html_lang
    # Words in the context's locale, like amounts and dates (worker.email.i18n).
    env.install_gettext_callables(_gettext, _ngettext, newstyle=True)  # type: ignore[attr-defined]
    return env


def render(env: jinja2.Environment, name: str, context: Mapping[str, object]) -> RenderedEmail:
    """Render ``email/<name>/{subject.txt,body.txt,body.html}``.

    The subject is joined onto one line (a newline in a header would end it). The bodies also
    see ``subject``, so the HTML ``<title>`` matches the inbox line.
    """
    folder = f"email/{name}"
    raw_subject = env.get_template(f"{folder}/subject.txt").render(context)
    subject = " ".join(line.strip() for line in raw_subject.splitlines() if line.strip())
    body_context = {**context, "subject": subject}
    text = env.get_template(f"{folder}/body.txt").render(body_context)
    html = env.get_template(f"{folder}/body.html").render(body_context)
    return RenderedEmail(subject=subject, text=text.strip() + "\n", html=html.strip() + "\n")


def format_localtime(
    value: datetime, timezone: str | None, locale: str | None, *, date_only: bool = False
) -> str:
    """An aware datetime as the customer reads it: ``Tuesday, March 4, 2025, 3:00 AM EST``."""
    if value.tzinfo is None or value.utcoffset() is None:
        msg = "localtime needs an aware datetime (storage is UTC)"
        raise ValueError(msg)
    loc = resolve_locale(locale)
    local = value.astimezone(resolve_timezone(timezone))
    day = format_date(local, "full", locale=loc)
    if date_only:
        return day
    clock = f"{format_time(local, 'short', locale=loc)} {format_time(local, 'z', locale=loc)}"
    # The locale's own way of joining a date and a time ("{1}, {0}", "{1} {0}", ...).
    joined = str(get_datetime_format("long", locale=loc)).replace("'", "")
    return joined.replace("{1}", day).replace("{0}", clock)


@lru_cache(maxsize=256)
def resolve_timezone(value: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(value or FALLBACK_TIMEZONE)
    except (ZoneInfoNotFoundError, ValueError):  # unknown name, or a path-like value
        return ZoneInfo(FALLBACK_TIMEZONE)


@jinja2.pass_context
def _gettext(ctx: jinja2.runtime.Context, message: str) -> str:
    return translations(ctx.get("locale")).gettext(message)


@jinja2.pass_context
def _ngettext(ctx: jinja2.runtime.Context, singular: str, plural: str, count: int) -> str:
    return translations(ctx.get("locale")).ngettext(singular, plural, count)


@jinja2.pass_context
def _money_filter(ctx: jinja2.runtime.Context, amount_minor: int, currency: str) -> str:
    return format_money(amount_minor, currency, ctx.get("locale"))


@jinja2.pass_context
def _localtime_filter(
    ctx: jinja2.runtime.Context, value: datetime, *, date_only: bool = False
) -> str:
    return format_localtime(value, ctx.get("timezone"), ctx.get("locale"), date_only=date_only)
