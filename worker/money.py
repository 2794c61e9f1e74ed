"""Amounts as the provider sends them: integers in the currency's minor unit, whose scale is
Stripe's, not always ISO 4217's. One place for it, for emails, terminal tables and reports."""

from __future__ import annotations

from decimal import Decimal

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


def minor_unit_exponent(currency: str) -> int:
    code = currency.upper()
    if code in ZERO_DECIMAL:
        return 0
    return 3 if code in THREE_DECIMAL else 2


def major_units(amount_minor: int, currency: str) -> Decimal:
    """``4900, "eur"`` -> ``Decimal("49.00")``; ``150000, "isk"`` -> ``Decimal("1500.00")``."""
    return Decimal(amount_minor).scaleb(-minor_unit_exponent(currency))
