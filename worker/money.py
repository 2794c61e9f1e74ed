"""Amounts as the provider sends them: integers in the currency's minor unit, whose scale is
Stripe's, not always ISO 4217's. One place for it, for emails, terminal tables and reports."""

from __future__ import annotations

import re
from decimal import Decimal
from functools import lru_cache

from babel import Locale, UnknownLocaleError
from babel.numbers import format_currency, list_currencies

FALLBACK_LOCALE = "en_US"
_CURRENCY_CODE = re.compile(r"[A-Za-z]{3}")

# Exponent of Stripe's minor unit, i.e. the scale of every ``amount`` the provider sends.
# It equals ISO 4217 for these; everything else is two decimals on the wire, including ISK, HUF
# and TWD, which Stripe keeps two-decimal "for backwards compatibility" although they are
# displayed without decimals (https://docs.stripe.com/currencies#special-cases).
ZERO_DECIMAL = frozenset(
    {
        "BIF",
        "CLP",
        "DJF",
        "GNF",
        "JPY",
        "KMF",
        "KRW",
        "MGA",
        "PYG",
        "RWF",
        "UGX",
        "VND",
        "VUV",
        "XAF",
        "XOF",
        "XPF",
    }
)
THREE_DECIMAL = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})


def is_currency(code: str) -> bool:
    """An ISO 4217 code (any case) that babel knows: ``usd`` yes, ``xyz`` no."""
    return _CURRENCY_CODE.fullmatch(code) is not None and code.upper() in _known_currencies()


@lru_cache(maxsize=1)
def _known_currencies() -> frozenset[str]:
    return frozenset(list_currencies())


def minor_unit_exponent(currency: str) -> int:
    code = currency.upper()
    if code in ZERO_DECIMAL:
        return 0
    return 3 if code in THREE_DECIMAL else 2


def major_units(amount_minor: int, currency: str) -> Decimal:
    """``4900, "eur"`` -> ``Decimal("49.00")``; ``150000, "isk"`` -> ``Decimal("1500.00")``."""
    return Decimal(amount_minor).scaleb(-minor_unit_exponent(currency))


@lru_cache(maxsize=256)
def resolve_locale(value: str | None) -> Locale:
    """``"de-DE"``/``"de_DE"`` -> de_DE; ``"de_XX"`` -> de; unknown or empty -> en_US."""
    raw = (value or "").replace("-", "_")
    for candidate in (raw, raw.split("_")[0]):
        try:
            return Locale.parse(candidate)
        except (ValueError, UnknownLocaleError):  # empty, malformed or not in CLDR
            continue
    return Locale.parse(FALLBACK_LOCALE)


def format_money(amount_minor: int, currency: str, locale: str | None = FALLBACK_LOCALE) -> str:
    """``4900, "eur", "de_DE"`` -> ``"49,00 €"``; Decimal all the way, never a float. Ops and
    finance tables use the default, en_US (``$49.00``); emails the customer's locale."""
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
        msg = f"money needs an int in minor units, got {amount_minor!r}"
        raise TypeError(msg)
    if not _CURRENCY_CODE.fullmatch(currency):
        msg = f"not an ISO 4217 currency code: {currency!r}"
        raise ValueError(msg)
    amount = major_units(amount_minor, currency)
    # Never rounded to the locale's display digits: Stripe keeps HUF, ISK, ... two-decimal,
    # and 8,333.33 HUF shown as 8,333 would disagree with the amount it stands for.
    return format_currency(
        amount, currency.upper(), locale=resolve_locale(locale), decimal_quantization=False
    )
