"""Retention report benchmark: the 24-month monthly report against a bare GROUP BY.

    python bench/reports.py [--customers 100000] [--months 24] [--seed 7] [--json]
                            [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/dunning_bench]

Generates a realistic ledger on PostgreSQL (customers signing up over the period, seat
changes, upgrades, trials, repeating discounts, voluntary and involuntary churn, customers
coming back), writes the MRR history (``mrr_changes``) and, with the production engine, the
monthly ledger (``mrr_movements``). Then times, in the same run and on the same rows:

* the floor: ``SELECT month, kind, count(*), sum(amount) FROM mrr_movements GROUP BY month,
  kind``;
* ``dunning report retention --by month`` over all the months, built exactly as the command
  builds it (read-only transaction, as of now, every format's rows), and its peak memory;
* for the record, ``--by quarter``, which streams the whole MRR history through the engine.

Prints the ratio (target: within 3x) as a table and as JSON. The database is dropped and
recreated on each run.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text

from worker.db import make_engine
from worker.ledger.models import EndCause
from worker.ledger.movements import Change, customer_months
from worker.ledger.periods import add_months
from worker.migrate import upgrade
from worker.reports.build import build_report

START = datetime(2024, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 1, 15, tzinfo=UTC)
PLANS = [("price_basic", 2_900), ("price_team", 9_900), ("price_business", 29_900)]


def generate(customers: int, months: int, seed: int) -> tuple[list[Change], int]:
    """MRR histories, as the engine reads them, ordered by customer, subscription, time."""
    rng = random.Random(seed)
    changes: list[Change] = []
    sub_id = 0
    for customer in range(1, customers + 1):
        currency = rng.choices(["usd", "eur", "gbp"], weights=[70, 20, 10])[0]
        joined = START + timedelta(days=rng.uniform(-730, months * 30.4))
        for _ in range(1 if rng.random() < 0.8 else 2):
            sub_id += 1
            changes.extend(
                _subscription(rng, customer, sub_id, currency=currency, at=joined, months=months)
            )
    return changes, sub_id


def _subscription(
    rng: random.Random, customer: int, sub_id: int, *, currency: str, at: datetime, months: int
) -> list[Change]:
    end = add_months(START, months)
    plan, price = rng.choice(PLANS)
    seats = rng.randint(1, 20)
    out: list[Change] = []

    def emit(when: datetime, mrr: int, **extra: Any) -> None:
        fields = {"discount_ends_at": None, "mrr_after_discount": None, "ended": False}
        fields |= {"end_cause": None, **extra}
        out.append(Change(customer, sub_id, when, mrr, currency=currency, plan=plan,
                          interval="month", **fields))  # fmt: skip

    if rng.random() < 0.3:  # a 14-day trial first
        emit(at, 0)
        at += timedelta(days=14)
    if rng.random() < 0.2:  # 20 % off for three months
        ends = at + timedelta(days=91)
        emit(at, price * seats * 8 // 10, discount_ends_at=ends, mrr_after_discount=price * seats)
    else:
        emit(at, price * seats)
    while True:
        at += timedelta(days=rng.uniform(5, 15))  # seats move about three times a month
        if at >= end:
            return out
        roll = rng.random()
        if roll < 0.01:
            emit(at, 0, ended=True, end_cause=EndCause.VOLUNTARY)
        elif roll < 0.015:
            emit(at, 0, ended=True, end_cause=EndCause.INVOLUNTARY)
        elif roll < 0.5:
            seats = max(1, seats + rng.choice([-2, -1, 1, 1, 2, 3]))
            if rng.random() < 0.05:
                plan, price = rng.choice(PLANS)
            emit(at, price * seats)
            continue
        else:
            continue
        if rng.random() > 0.15:
            return out
        at += timedelta(days=rng.uniform(30, 200))  # came back
        if at >= end:
            return out
        emit(at, price * seats)


def load(url: str, changes: list[Change], subscriptions: int, customers: int) -> int:
    """COPY customers, subscriptions, the history and the monthly ledger; returns how many
    movement rows the ledger holds."""
    conn_url = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conn_url) as conn, conn.cursor() as cur:
        stamp = NOW.isoformat()
        _copy(cur, "customers (id, provider, provider_id, updated_at)",
              (f"{i}\tstripe\tcus_{i}\t{stamp}\n" for i in range(1, customers + 1)))  # fmt: skip
        owners = {c.subscription_id: c.customer_id for c in changes}
        _copy(cur, "subscriptions (id, provider, provider_id, customer_id, status, mrr, as_of)",
              (f"{s}\tstripe\tsub_{s}\t{owners[s]}\tactive\t0\t{stamp}\n"
               for s in range(1, subscriptions + 1) if s in owners))  # fmt: skip
        _copy(
            cur,
            "mrr_changes (subscription_id, customer_id, currency, effective_at, mrr,"
            " discount_ends_at, mrr_after_discount, ended, end_cause, plan, interval, source,"
            " recorded_at)",
            (
                f"{c.subscription_id}\t{c.customer_id}\t{c.currency}\t{c.effective_at.isoformat()}"
                f"\t{c.mrr}\t{_n(c.discount_ends_at)}\t{_n(c.mrr_after_discount)}\t{c.ended}"
                f"\t{_n(c.end_cause)}\t{c.plan}\t{c.interval}\tbench_{i}\t{stamp}\n"
                for i, c in enumerate(changes)
            ),
        )
        movements = 0

        def ledger() -> Any:
            nonlocal movements
            start = 0
            while start < len(changes):
                customer = changes[start].customer_id
                stop = start
                while stop < len(changes) and changes[stop].customer_id == customer:
                    stop += 1
                for (month, currency, cohort, kind), amount in customer_months(
                    changes[start:stop]
                ).items():
                    movements += 1
                    yield (f"{customer}\t{currency}\t{month.isoformat()}\t{kind}\t{cohort}"
                           f"\t{amount}\t{stamp}\n")  # fmt: skip
                start = stop

        _copy(
            cur,
            "mrr_movements (customer_id, currency, month, kind, cohort, amount, recorded_at)",
            ledger(),
        )
        cur.execute("ANALYZE")
    return movements


def _n(value: object) -> str:
    if value is None:
        return "\\N"
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _copy(cur: psycopg.Cursor[Any], target: str, lines: Any) -> None:
    with cur.copy(f"COPY {target} FROM STDIN") as copy:
        buffer = io.StringIO()
        for i, line in enumerate(lines):
            buffer.write(line)
            if i % 50_000 == 49_999:
                copy.write(buffer.getvalue())
                buffer = io.StringIO()
        copy.write(buffer.getvalue())


def timed(fn: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--months", type=int, default=24)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print only the JSON")
    parser.add_argument(
        "--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/dunning_bench"
    )
    args = parser.parse_args()
    admin_url, name = args.database_url.rsplit("/", 1)
    with psycopg.connect(
        admin_url.replace("postgresql+psycopg://", "postgresql://") + "/postgres", autocommit=True
    ) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    upgrade(args.database_url)
    began = time.perf_counter()
    changes, subscriptions = generate(args.customers, args.months, args.seed)
    movements = load(args.database_url, changes, subscriptions, args.customers)
    setup = time.perf_counter() - began
    engine = make_engine(args.database_url)
    first, last = f"{START:%Y-%m}", f"{add_months(START, args.months - 1):%Y-%m}"

    def floor() -> object:
        with engine.connect() as conn:
            return conn.execute(
                text(
                    "SELECT month, kind, count(*), sum(amount) FROM mrr_movements"
                    " GROUP BY month, kind"
                )
            ).all()

    def report() -> object:
        return build_report(engine, "retention", first=first, last=last, by="month", as_of=NOW)

    floor()  # warm the cache for both
    floor_s = timed(floor, args.runs)
    report_s = timed(report, args.runs)
    tracemalloc.start()
    rows = len(build_report(engine, "retention", first=first, last=last, as_of=NOW).rows)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # Quarters, TTM and plan/interval segments net movements per customer over the period,
    # so they run the engine over the whole MRR history instead: timed once, for the record.
    exact_s = timed(
        lambda: build_report(engine, "retention", first=first, last=last, by="quarter", as_of=NOW),
        1,
    )
    engine.dispose()
    result = {
        "customers": args.customers,
        "months": args.months,
        "mrr_changes": len(changes),
        "mrr_movements": movements,
        "report_rows": rows,
        "setup_seconds": round(setup, 1),
        "floor_group_by_seconds": round(floor_s, 3),
        "retention_report_seconds": round(report_s, 3),
        "ratio": round(report_s / floor_s, 2),
        "report_peak_python_mib": round(peak / 2**20, 1),
        "quarterly_report_seconds": round(exact_s, 2),
        "process_max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if not args.json:
        for key, value in result.items():
            print(f"{key:28} {value}")
    print(json.dumps(result, indent=2 if args.json else None))


if __name__ == "__main__":
    main()
