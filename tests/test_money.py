"""Minor units at Stripe's scale, the same in emails, terminal tables and reports."""

from __future__ import annotations

from decimal import Decimal

import pytest

from worker.money import format_money, major_units


@pytest.mark.parametrize(
    ("amount", "currency", "major", "shown"),
    [
        (4_900, "usd", Decimal("49.00"), "$49.00"),
        (4_900, "jpy", Decimal(4900), "¥4,900"),  # zero-decimal
        (1_234, "kwd", Decimal("1.234"), "KWD1.234"),  # three decimals
        # ISK: Stripe sends hundredths although ISO 4217 (and babel) say no decimals.
        (150_000, "isk", Decimal("1500.00"), "ISK1,500"),
    ],
)
def test_one_scale_everywhere(amount: int, currency: str, major: Decimal, shown: str) -> None:
    assert major_units(amount, currency) == major
    assert format_money(amount, currency) == shown
    assert format_money(amount, currency, "en_US") == shown
