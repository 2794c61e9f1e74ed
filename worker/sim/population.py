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
    ("es_ES", "Europe/Madrid", "eur"),
    ("it_IT", "Europe/Rome", "eur"),
    ("nl_NL", "Europe/Amsterdam", "eur"),
    ("pt_BR", "America/Sao_Paulo", "brl"),
]
PRICES = {
    "usd": [900, 2900, 4900, 9900, 29900],
    "gbp": [700, 2500, 7900],
    "eur": [900, 2900, 4900, 19900],
    "jpy": [1200, 4800, 9800],
    "brl": [2990, 4990, 9990],
}
# Cards the demo's month (March 2026) sees expire: the daily scan warns their owners.
EXPIRING = (3, 2026)
STOP_PAYMENT = Decline(decline_code="stop_payment_order", advice_code="do_not_try_again")


@dataclass(frozen=True)
class Move:
    after: timedelta  # after the first failure (early moves: after the start of the month)
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
    # Moves that happen whatever the renewal does (a card update after an expiry notice).
    early_moves: list[Move] = field(default_factory=list)
    backup: CardSpec | None = None  # another saved card, not the default
    expires: tuple[int, int] = (12, 2030)  # the default card's (month, year)

    @property
    def card(self) -> CardSpec:
        brand = random.Random(self.email).choice(["visa", "visa", "mastercard", "amex"])
        month, year = self.expires
        return CardSpec(brand=brand, outcomes=list(self.outcomes), exp_month=month, exp_year=year)


def _stories(rng: random.Random) -> list[tuple[float, str, list[Decline | str], list[Move]]]:
    hours = lambda lo, hi: timedelta(hours=rng.randint(lo, hi))  # noqa: E731 - local shorthand
    return [
        (1.64, "paid on time", [SUCCEED], []),
        # Paid on time on a card that expires this month: the scan's notice asks for a new one.
        (0.10, "card expiring, updated after our notice", [SUCCEED], []),
        (0.06, "card expiring, renewed by the network", [SUCCEED], []),
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
        (0.06, "card expired, backup card paid", [EXPIRED_CARD], []),
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
        # Every story once first (a small demo still shows each), then by weight.
        pick = i + 1 if i + 1 < len(labels) else rng.choices(range(len(labels)), weights=weights)[0]
        locale, zone, currency = rng.choice(PLACES)
        name = f"{NAMES[i % len(NAMES)]} {chr(65 + (i // len(NAMES)) % 26)}."
        story = labels[pick]
        extras: dict[str, object] = {}
        if story.startswith("card expiring"):
            kind = "customer_updates_card" if "notice" in story else "network_updater"
            extras = {"expires": EXPIRING, "early_moves": [Move(timedelta(days=6), kind)]}
        elif story == "card expired, backup card paid":
            extras = {"backup": CardSpec(brand="mastercard", last4="4444", exp_year=2029)}
        customers.append(
            Customer(
                name=name,
                email=f"customer{i:03d}@example.com",
                locale=locale,
                timezone=zone,
                currency=currency,
                amount=rng.choice(PRICES[currency]),
                bill_after=timedelta(days=rng.uniform(0, 10)),
                story=story,
                outcomes=list(scripts[pick]),
                moves=list(moves[pick]),
                **extras,  # type: ignore[arg-type]
            )
        )
    return customers
