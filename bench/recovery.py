"""Recovery benchmark: the shipped retry policy against two fixed baselines, on one simulated
population of failed invoices. A model, not a measurement: see bench/README.md for every
assumption and where it comes from.

    python bench/recovery.py [--invoices 20000] [--seed 7] [--config PATH] [--json]

The policy side calls the production engine (worker.dunning.rules: classify, next_retry
with the per-card network history, paydays, MAC waits); the baselines ignore decline reasons.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.billing.domain import Decline
from worker.config import DeclineClass, Policy, load_policy
from worker.dunning import rules

WINDOW = timedelta(days=14)
START = datetime(2026, 3, 1, tzinfo=UTC)
# (decline_code, network_advice_code, share): the mix of first declines (README, "Declines").
DECLINE_MIX = [
    ("insufficient_funds", None, 0.40),
    ("insufficient_funds", "25", 0.04),
    ("do_not_honor", None, 0.16),
    ("generic_decline", None, 0.08),
    ("processing_error", None, 0.05),
    ("expired_card", None, 0.12),
    ("incorrect_number", None, 0.02),
    ("authentication_required", None, 0.05),
    ("stolen_card", None, 0.02),
    ("fraudulent", None, 0.02),
    ("revocation_of_authorization", None, 0.02),
    ("do_not_honor", "03", 0.02),
]
BRANDS = [("visa", 0.55), ("mastercard", 0.35), ("amex", 0.10)]
NEVER = frozenset({DeclineClass.FRAUD, DeclineClass.STOP})  # any attempt is a violation


@dataclass
class Invoice:
    code: str
    mac: str | None
    brand: str
    amount: int
    failed_at: datetime
    zone: ZoneInfo
    cls: DeclineClass
    funds_back: datetime | None = None  # funds: from when a charge goes through
    spend_by: datetime | None = None  # ... and until when (the money is spent again)
    soft_p: float = 0.0  # chance that any one blind retry succeeds
    issuer_cleared_at: datetime | None = None  # opaque: the customer called the bank
    card_fixed_at: datetime | None = None  # network updater / customer adds a card
    new_card_ok: bool = False  # ... and whether that card then pays (one fact, not a lottery)
    customer_pays_at: datetime | None = None  # customer pays herself (3DS, after an email)
    attempts: list[datetime] = field(default_factory=list)


def _pick(rng: random.Random, table: list[tuple]) -> tuple:  # type: ignore[type-arg]
    return rng.choices(table, weights=[row[-1] for row in table])[0]


def make_population(n: int, seed: int, policy: Policy) -> list[Invoice]:
    rng = random.Random(seed)
    zones = [
        ZoneInfo(z)
        for z in (
            "America/New_York",
            "Europe/Berlin",
            "America/Chicago",
            "Europe/London",
            "America/Los_Angeles",
        )
    ]
    out = []
    for _ in range(n):
        code, mac, _ = _pick(rng, DECLINE_MIX)
        brand = _pick(rng, BRANDS)[0] if mac is None else "mastercard"
        failed_at = START + timedelta(days=rng.uniform(0, 28))
        inv = Invoice(
            code,
            mac,
            brand,
            int(rng.lognormvariate(8.3, 0.8)),
            failed_at,
            rng.choice(zones),
            rules.classify(Decline(decline_code=code, network_advice_code=mac), policy),
        )
        if inv.cls is DeclineClass.FUNDS and rng.random() < 0.7:
            payday = _next_payday(rng, failed_at, inv.zone)
            inv.funds_back, inv.spend_by = payday, payday + timedelta(days=rng.uniform(1, 4))
        elif inv.cls is DeclineClass.SOON:
            inv.soft_p = 0.55
        elif inv.cls is DeclineClass.SOFT:
            inv.soft_p = 0.04
            if rng.random() < 0.35:  # after the first email, "contact your bank"
                inv.issuer_cleared_at = failed_at + timedelta(hours=rng.uniform(24, 144))
        if inv.cls is DeclineClass.HARD and rng.random() < 0.55:
            inv.card_fixed_at = failed_at + timedelta(hours=rng.uniform(6, 240))
        elif inv.cls in {DeclineClass.FUNDS, DeclineClass.SOFT} and rng.random() < 0.10:
            # the email's "update your card" link, read in the days after the first failure
            inv.card_fixed_at = failed_at + timedelta(hours=rng.uniform(2, 120))
        inv.new_card_ok = rng.random() < 0.9
        if inv.cls in {DeclineClass.NEEDS_CUSTOMER, DeclineClass.HARD} and rng.random() < 0.25:
            inv.customer_pays_at = failed_at + timedelta(hours=rng.uniform(2, 200))
        out.append(inv)
    return out


def _next_payday(rng: random.Random, after: datetime, zone: ZoneInfo) -> datetime:
    """The customer's next pay: weekly/biweekly Fridays, the 1st/15th, or month end."""
    kind = rng.choices(["friday", "semimonthly", "month_end"], weights=[0.55, 0.25, 0.20])[0]
    day: date = after.astimezone(zone).date()
    for _ in range(40):
        day += timedelta(days=1)
        if (
            (kind == "friday" and day.weekday() == 4)
            or (kind == "semimonthly" and day.day in {1, 15})
            or (kind == "month_end" and (day + timedelta(days=1)).day == 1)
        ):
            paid = day - timedelta(days=max(day.weekday() - 4, 0))  # weekend: Friday before
            at = datetime(paid.year, paid.month, paid.day, 6, tzinfo=zone).astimezone(UTC)
            if at > after:
                return at
    return after + timedelta(days=7)


def succeeds(inv: Invoice, at: datetime, rng: random.Random) -> bool:
    if inv.card_fixed_at and at >= inv.card_fixed_at:
        return inv.new_card_ok
    match inv.cls:
        case DeclineClass.FUNDS:
            return bool(inv.funds_back and inv.spend_by and inv.funds_back <= at <= inv.spend_by)
        case DeclineClass.SOFT | DeclineClass.SOON:
            cleared = inv.issuer_cleared_at is not None and at >= inv.issuer_cleared_at
            return rng.random() < (0.9 if cleared else inv.soft_p)
        case _:
            return False  # hard, authentication (off-session), stop, fraud


# ----- strategies: each returns the next retry time after `now`, or None -----

Strategy = Callable[[Invoice, datetime, int], datetime | None]


def fixed(days: list[float]) -> Strategy:
    def next_at(inv: Invoice, now: datetime, done: int) -> datetime | None:
        for d in days:
            at = inv.failed_at + timedelta(days=d)
            if at > now:
                return at
        return None

    return next_at


def ours(policy: Policy) -> Strategy:
    def next_at(inv: Invoice, now: datetime, done: int) -> datetime | None:
        card = rules.CardHistory(
            brand=inv.brand,
            declines=tuple((a, inv.amount) for a in [inv.failed_at, *inv.attempts]),
            last_attempt_at=now,
            network_advice_code=inv.mac,
            last_declined_at=now,
        )
        decision = rules.next_retry(
            policy,
            inv.cls,
            opened_at=inv.failed_at,
            now=now,
            window_ends_at=inv.failed_at + WINDOW,
            retries_done=done,
            card=card,
            amount=inv.amount,
            zone=inv.zone,
        )
        return decision.at if isinstance(decision, rules.PlannedRetry) else None

    return next_at


@dataclass
class Result:
    recovered: int = 0
    recovered_amount: int = 0
    at_risk_amount: int = 0
    retries: int = 0
    violations: int = 0
    days_to_recover: list[float] = field(default_factory=list)
    by_class: dict[str, list[int]] = field(default_factory=dict)  # class: [invoices, recovered]


def run(
    name: str, strategy: Strategy, population: list[Invoice], seed: int, *, prompt_card_retry: bool
) -> Result:
    rng, result = random.Random(seed), Result()
    for template in population:
        inv = Invoice(**{**template.__dict__, "attempts": []})
        result.at_risk_amount += inv.amount
        end, now, done, paid_at = inv.failed_at + WINDOW, inv.failed_at, 0, None
        events = sorted(t for t in (inv.card_fixed_at, inv.customer_pays_at) if t and t < end)
        while paid_at is None:
            at = strategy(inv, now, done)
            if (
                prompt_card_retry
                and inv.card_fixed_at
                and now < inv.card_fixed_at < end
                and (at is None or inv.card_fixed_at < at)
            ):
                at = inv.card_fixed_at  # the network updater / new card: one prompt retry
            pay = next((t for t in events if t > now and inv.customer_pays_at == t), None)
            if pay and (at is None or pay < at):
                paid_at = pay
                break
            if at is None or at >= end:
                break
            now, done = at, done + 1
            inv.attempts.append(at)
            result.retries += 1
            result.violations += _violates(inv, at)
            if succeeds(inv, at, rng):
                paid_at = at
        tally = result.by_class.setdefault(inv.cls.value, [0, 0])
        tally[0] += 1
        if paid_at is not None:
            tally[1] += 1
            result.recovered += 1
            result.recovered_amount += inv.amount
            result.days_to_recover.append((paid_at - inv.failed_at) / timedelta(days=1))
    return result


def _violates(inv: Invoice, at: datetime) -> int:
    """1 if this attempt breaks a card-network rule (retry-rules §2)."""
    if inv.cls in NEVER and not (inv.card_fixed_at and at >= inv.card_fixed_at):
        return 1
    history = [inv.failed_at, *inv.attempts]
    if inv.brand == "mastercard":
        if sum(1 for t in history if at - timedelta(days=1) < t <= at) > 10:
            return 1
        return int(sum(1 for t in history if at - timedelta(days=30) < t <= at) > 35)
    return int(sum(1 for t in history if at - timedelta(days=30) < t <= at) > 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invoices", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print only the JSON")
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "config" / "dunning.toml",
        help="the policy file to run as 'dunning-worker policy' (default: the shipped one)",
    )
    args = parser.parse_args()
    policy = load_policy(args.config)
    began = time.monotonic()
    population = make_population(args.invoices, args.seed, policy)
    strategies = {
        "dunning-worker policy": (ours(policy), True),
        "fixed 3/5/7 days": (fixed([3, 5, 7]), False),
        "8 tries over 14 days": (fixed([14 * (i + 1) / 9 for i in range(8)]), False),
    }
    rows = {}
    for name, (strategy, prompt) in strategies.items():
        r = run(name, strategy, population, args.seed, prompt_card_retry=prompt)
        rows[name] = {
            "recovery_rate_count": round(r.recovered / len(population), 4),
            "recovery_rate_amount": round(r.recovered_amount / r.at_risk_amount, 4),
            "retries_per_recovery": round(r.retries / r.recovered, 2) if r.recovered else None,
            "network_violations": r.violations,
            "median_days_to_recover": (
                round(statistics.median(r.days_to_recover), 2) if r.days_to_recover else None
            ),
            "recovery_rate_by_class": {
                cls: round(won / total, 4) for cls, (total, won) in sorted(r.by_class.items())
            },
        }
    report = {
        "invoices": len(population),
        "seed": args.seed,
        "model": "see bench/README.md",
        "seconds": round(time.monotonic() - began, 2),
        "strategies": rows,
    }
    if not args.json:
        print(
            f"{'strategy':24} {'rate':>7} {'amount':>7} {'retries/rec':>11} "
            f"{'violations':>10} {'median d':>8}"
        )
        for name, row in rows.items():
            print(
                f"{name:24} {row['recovery_rate_count']:>7.1%} "
                f"{row['recovery_rate_amount']:>7.1%} {row['retries_per_recovery']!s:>11} "
                f"{row['network_violations']:>10} {row['median_days_to_recover']!s:>8}"
            )
    print(json.dumps(report, indent=None if not args.json else 2))


if __name__ == "__main__":
    main()
