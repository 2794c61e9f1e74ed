"""Simulated customers for the demo: who fails, how, and what they do about it.

Each :class:`Customer` carries a card script for the peer (the outcome of every charge
attempt) and a few timed moves relative to the first failure (the network updater replaces an
expired card, the customer updates the card or completes authentication after an email). The
mix is a plausible illustration, not a measured distribution: about a quarter of renewals fail,
insufficient funds is the most common decline, expired cards are often fixed by the network
updater, fraud and stop-payment declines never recover.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta

from worker.sim.stripe_peer import (
    AUTHENTICATION_REQUIRED,
    DO_NOT_HONOR,
    EXPIRED_CARD,
    INSUFFICIENT_FUNDS,
    PROCESSING_ERROR,
    STOLEN_CARD,
    SUCCEED,
    CardSpec,
    Decline,
)

NAMES = [
    "Ada",
    "Bruno",
    "Chen",
    "Dalia",
    "Emeka",
    "Freya",
    "Goran",
    "Hana",
    "Ines",
    "Jonas",
    "Kemal",
    "Lena",
    "Mateo",
    "Noor",
    "Oskar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sami",
    "Tove",
]
PLACES = [
    ("en_US", "America/New_York", "usd"),
    ("en_GB", "Europe/London", "gbp"),
    ("de_DE", "Europe/Berlin", "eur"),
    ("fr_FR", "Europe/Paris", "eur"),
    ("en_US", "America/Los_Angeles", "usd"),
    ("ja_JP", "Asia/Tokyo", "jpy"),
]
PRICES = {
    "usd": [900, 2900, 4900, 9900, 29900],
    "gbp": [700, 2500, 7900],
    "eur": [900, 2900, 4900, 19900],
    "jpy": [1200, 4800, 9800],
}
STOP_PAYMENT = Decline(decline_code="stop_payment_order", advice_code="do_not_try_again")


@dataclass(frozen=True)
class Move:
    after: timedelta  # after the first failure
    kind: str  # network_updater | customer_updates_card | customer_pays


@dataclass
class Customer:
    name: str
    email: str
    locale: str
    timezone: str
    currency: str
    amount: int
    bill_after: timedelta  # renewal time from the start of the month
    story: str  # a short label shown in the summary
    outcomes: list[Decline | str]
    moves: list[Move] = field(default_factory=list)

    @property
    def card(self) -> CardSpec:
        brand = random.Random(self.email).choice(["visa", "visa", "mastercard", "amex"])
        return CardSpec(brand=brand, outcomes=list(self.outcomes))


def _stories(rng: random.Random) -> list[tuple[float, str, list[Decline | str], list[Move]]]:
    hours = lambda lo, hi: timedelta(hours=rng.randint(lo, hi))  # noqa: E731 - local shorthand
    return [
        (1.80, "paid on time", [SUCCEED], []),
        (
            0.12,
            "funds back after a few days",
            [INSUFFICIENT_FUNDS] * rng.randint(2, 4) + [SUCCEED],
            [],
        ),
        (0.06, "never had the funds", [INSUFFICIENT_FUNDS], []),
        (0.07, "bank said no twice, then yes", [DO_NOT_HONOR, DO_NOT_HONOR, SUCCEED], []),
        (0.03, "issuer hiccup", [PROCESSING_ERROR, SUCCEED], []),
        (
            0.09,
            "card expired, network updater fixed it",
            [EXPIRED_CARD],
            [Move(hours(6, 96), "network_updater")],
        ),
        (
            0.07,
            "card expired, customer updated it",
            [EXPIRED_CARD],
            [Move(hours(20, 200), "customer_updates_card")],
        ),
        (0.05, "card expired, nobody came back", [EXPIRED_CARD], []),
        (
            0.05,
            "bank wanted 3-D Secure, customer confirmed",
            [AUTHENTICATION_REQUIRED, SUCCEED],
            [Move(hours(2, 80), "customer_pays")],
        ),
        (0.03, "stolen card", [STOLEN_CARD], []),
        (0.03, "customer stopped the payment", [STOP_PAYMENT], []),
    ]


def make_population(count: int, *, seed: int) -> list[Customer]:
    rng = random.Random(seed)
    customers = []
    for i in range(count):
        weights, labels, scripts, moves = zip(
            *[(w, s, o, m) for w, s, o, m in _stories(rng)], strict=True
        )
        pick = rng.choices(range(len(labels)), weights=weights)[0]
        locale, zone, currency = rng.choice(PLACES)
        name = f"{NAMES[i % len(NAMES)]} {chr(65 + (i // len(NAMES)) % 26)}."
        customers.append(
            Customer(
                name=name,
                email=f"customer{i:03d}@example.com",
                locale=locale,
                timezone=zone,
                currency=currency,
                amount=rng.choice(PRICES[currency]),
                bill_after=timedelta(days=rng.uniform(0, 10)),
                story=labels[pick],
                outcomes=list(scripts[pick]),
                moves=list(moves[pick]),
            )
        )
    return customers
