"""Scheduler tick benchmark: due actions claimed and handed to the broker, against the bare
enqueue in the same run.

    python bench/scheduler.py [--sizes 10000,100000] [--full] [--due 10000] [--runs 3] [--json]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/dunning_bench_sched]
        [--redis-url redis://127.0.0.1:6379/8]

Needs PostgreSQL and Redis (``make services``). For each table size (10 k and 100 k rows; 1 M
too with ``--full``) it fills ``scheduled_actions`` with one ``INSERT ... SELECT
generate_series`` so that ``--due`` of them are planned and due (the rest: history that is
done or cancelled, retries and emails planned over the next two weeks, a few claimed and in
flight), and then, on the real code (``worker.webhooks.tasks.tick_once``, the function the
beat's ``dunning.tick`` runs, with a Redis broker):

* hands out every due action, tick after tick, and reports actions per second of tick time,
  how many ticks it took and how long the beat (one tick every ``TICK_EVERY``) needs for them;
* the floor, in the same run and on the same Redis: ``send_task`` one message at a time, the
  way a tick sent one message per action (perf-floors.md: ~1,700/s);
* an empty tick (nothing due) right after the burst (the burst still in flight) and once it
  is done, with its SQL statements, against the floor of an empty transaction (``SELECT 1``).

Prints a table and JSON (``--json``: JSON only). The database ``dunning_bench_sched`` is
dropped and recreated; only the given Redis database is flushed (FLUSHDB, never FLUSHALL).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg
import redis
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

from worker import clock
from worker.app import DunningCelery, create_app
from worker.migrate import upgrade
from worker.schedule import TICK_EVERY
from worker.settings import Settings
from worker.webhooks.tasks import tick_once

DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/dunning_bench_sched"
DEFAULT_REDIS = "redis://127.0.0.1:6379/8"
ENQUEUE_FLOOR_MESSAGES = 2_000
EMPTY_TICKS = 50
MAX_TICKS = 1_000  # a tick that hands nothing out is a bug, not a long wait


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def recreate(url: str) -> None:
    parsed = make_url(url)
    name = parsed.database
    admin = _libpq(parsed.set(database="postgres").render_as_string(hide_password=False))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    upgrade(url)


# One statement builds the table: row g (1..size) is due and planned for g <= due; then a few
# claimed and in flight, a fifth planned over the next 14 days, the rest finished history.
FILL = """
INSERT INTO scheduled_actions (
    customer_id, kind, due_at, status, idempotency_key, reason, created_at,
    claimed_at, claims, finished_at, ops_requested
)
SELECT
    1 + mod(g, 1000),
    CASE WHEN mod(g, 3) = 0 THEN 'send_email' ELSE 'retry_payment' END,
    CASE
        WHEN g <= %(due)s THEN %(now)s - make_interval(secs => mod(g, 3600))
        WHEN g <= %(due)s + %(in_flight)s THEN %(now)s - interval '2 minutes'
        WHEN g <= %(due)s + %(in_flight)s + %(future)s
            THEN %(now)s + make_interval(secs => 60 + mod(g, 1209600))
        ELSE %(now)s - make_interval(secs => 3600 + mod(g, 15552000))
    END,
    CASE
        WHEN g <= %(due)s THEN 'planned'
        WHEN g <= %(due)s + %(in_flight)s THEN 'claimed'
        WHEN g <= %(due)s + %(in_flight)s + %(future)s THEN 'planned'
        WHEN mod(g, 4) = 0 THEN 'cancelled'
        ELSE 'done'
    END,
    'bench:' || g,
    'bench',
    %(now)s - interval '30 days',
    CASE WHEN g > %(due)s AND g <= %(due)s + %(in_flight)s
        THEN %(now)s - interval '1 minute' END,
    CASE WHEN g > %(due)s AND g <= %(due)s + %(in_flight)s THEN 1 ELSE 0 END,
    CASE WHEN g > %(due)s + %(in_flight)s + %(future)s
        THEN %(now)s - make_interval(secs => mod(g, 15552000)) END,
    false
FROM generate_series(1, %(size)s) AS g
"""


def fill(url: str, *, size: int, due: int, now: datetime) -> dict[str, int]:
    rest = size - due
    shape = {"size": size, "due": due, "in_flight": rest // 1000, "future": rest // 5}
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute("TRUNCATE scheduled_actions, customers RESTART IDENTITY CASCADE")
        conn.execute(
            "INSERT INTO customers (provider, provider_id, updated_at) "
            "SELECT 'stripe', 'cus_bench' || g, %(now)s FROM generate_series(1, 1000) AS g",
            {"now": now},
        )
        conn.execute(FILL, {**shape, "now": now})
        conn.execute("VACUUM ANALYZE scheduled_actions")
    return shape


def reset_due(url: str, due: int) -> None:
    """The due rows planned again, as before the burst."""
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute(
            "UPDATE scheduled_actions SET status = 'planned', claimed_at = NULL, claims = 0, "
            "finished_at = NULL WHERE id <= %s",
            (due,),
        )
        conn.execute("VACUUM ANALYZE scheduled_actions")


def finish_due(url: str, due: int) -> None:
    """The burst done by the workers: nothing due, nothing in flight beyond the usual."""
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute(
            "UPDATE scheduled_actions SET status = 'done', finished_at = now() WHERE id <= %s",
            (due,),
        )
        conn.execute("VACUUM ANALYZE scheduled_actions")


@contextmanager
def counting(app: DunningCelery) -> Iterator[list[int]]:
    """Counts the SQL statements the app's engine runs."""
    counter = [0]

    def count(*_: Any) -> None:
        counter[0] += 1

    engine = app.runtime.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield counter
    finally:
        event.remove(engine, "before_cursor_execute", count)


def burst(app: DunningCelery, url: str, due: int, flush: Callable[[], None]) -> dict[str, Any]:
    """Tick until every due action is handed out; time the ticks only."""
    flush()
    durations: list[float] = []
    handed = 0
    with counting(app) as statements:
        while handed < due:
            started = time.perf_counter()
            got = tick_once(app)
            durations.append(time.perf_counter() - started)
            if got == 0 or len(durations) > MAX_TICKS:
                msg = (
                    f"tick handed out {handed} of {due} due actions, then stopped"
                    " (--due above the in-flight bound, worker.dunning.scheduler.MAX_IN_FLIGHT?)"
                )
                raise SystemExit(msg)
            handed += got
    with psycopg.connect(_libpq(url)) as conn:
        claimed = conn.execute(
            "SELECT count(*) FROM scheduled_actions WHERE id <= %s AND status = 'claimed'", (due,)
        ).fetchone()
    assert claimed is not None and claimed[0] == due, "not every due action was claimed"  # noqa: S101
    total = sum(durations)
    every = TICK_EVERY.total_seconds()
    return {
        "handed_out": handed,
        "ticks": len(durations),
        "tick_seconds": total,
        "actions_per_s": handed / total,
        "statements": statements[0],
        # one tick every TICK_EVERY: the last due action leaves with the last tick
        "beat_seconds": every * (len(durations) - 1) + durations[-1],
    }


def empty_ticks(app: DunningCelery, runs: int) -> dict[str, float]:
    for _ in range(5):  # warm: the first ticks after a burst pay for cold caches
        tick_once(app)
    durations = []
    with counting(app) as statements:
        for _ in range(runs):
            started = time.perf_counter()
            if tick_once(app) != 0:
                raise SystemExit("an empty tick handed something out")
            durations.append(time.perf_counter() - started)
    return {
        "ms": statistics.median(durations) * 1000,
        "best_ms": min(durations) * 1000,
        "statements": statements[0] / runs,
    }


def empty_transaction_ms(app: DunningCelery, runs: int) -> float:
    """The floor of an empty tick: one transaction through the same session machinery."""
    durations = []
    for _ in range(runs):
        started = time.perf_counter()
        with app.runtime.session() as session:
            session.execute(text("SELECT 1"))
        durations.append(time.perf_counter() - started)
    return statistics.median(durations) * 1000


def enqueue_floor(app: DunningCelery, flush: Callable[[], None]) -> float:
    """``send_task`` one message at a time, the way the tick sent one per action."""
    flush()
    for i in range(200):  # connect, warm up
        app.send_task("bench.noop", kwargs={"action_id": i}, queue="bench", retry=False)
    started = time.perf_counter()
    for i in range(ENQUEUE_FLOOR_MESSAGES):
        app.send_task("bench.noop", kwargs={"action_id": i}, queue="bench", retry=False)
    rate = ENQUEUE_FLOOR_MESSAGES / (time.perf_counter() - started)
    flush()
    return rate


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = sorted({*args.sizes, *([1_000_000] if args.full else [])})
    if min(sizes) < args.due:
        raise SystemExit(f"--sizes: every size must hold the {args.due:,} due actions")
    broker = redis.Redis.from_url(args.redis_url)
    try:
        broker.ping()
    except redis.RedisError as exc:
        msg = f"Redis at {args.redis_url} not reachable ({exc}): `make services`"
        raise SystemExit(msg) from None

    def flush() -> None:
        broker.flushdb()  # our own database number only

    try:
        recreate(args.database_url)
    except psycopg.OperationalError as exc:
        raise SystemExit(f"PostgreSQL not reachable ({exc}): `make services`") from None
    data_dir = Path(tempfile.mkdtemp(prefix="bench-sched-"))
    settings = Settings(
        database_url=args.database_url, broker_url=args.redis_url, data_dir=data_dir
    )
    app = create_app(settings)
    results: list[dict[str, Any]] = []
    try:
        for size in sizes:
            now = clock.now()
            setup = time.perf_counter()
            shape = fill(args.database_url, size=size, due=args.due, now=now)
            setup = time.perf_counter() - setup
            bursts, floors = [], []
            for run_no in range(args.runs):
                if run_no:
                    reset_due(args.database_url, args.due)
                floors.append(enqueue_floor(app, flush))
                bursts.append(burst(app, args.database_url, args.due, flush))
            in_flight = empty_ticks(app, EMPTY_TICKS)  # the burst claimed, not finished
            finish_due(args.database_url, args.due)
            quiet = empty_ticks(app, EMPTY_TICKS)
            floor_tx = empty_transaction_ms(app, EMPTY_TICKS)
            best = max(bursts, key=lambda b: b["actions_per_s"])
            floor = statistics.median(floors)
            results.append(
                {
                    "rows": size,
                    **shape,
                    "setup_s": round(setup, 2),
                    "tick": {**best, "runs": [round(b["actions_per_s"]) for b in bursts]},
                    "enqueue_floor_per_s": floor,
                    "ratio_tick_to_floor": best["actions_per_s"] / floor,
                    "empty_tick_in_flight": in_flight,
                    "empty_tick": quiet,
                    "empty_transaction_ms": floor_tx,
                    "ratio_empty_tick_to_transaction": quiet["ms"] / floor_tx,
                }
            )
            flush()
    finally:
        flush()
        app.runtime.close()
    base = results[0]["empty_tick"]
    for row in results:
        row["empty_tick_vs_smallest"] = row["empty_tick"]["ms"] / base["ms"]
        row["empty_tick_best_vs_smallest"] = row["empty_tick"]["best_ms"] / base["best_ms"]
    return {
        "benchmark": "scheduler",
        "due": args.due,
        "tick_every_s": TICK_EVERY.total_seconds(),
        "sizes": results,
    }


def print_table(report: dict[str, Any]) -> None:
    due = report["due"]
    print(f"{due:,} due actions; the beat ticks every {report['tick_every_s']:.0f} s")
    print(
        f"{'rows':>9} {'tick /s':>8} {'floor /s':>8} {'ratio':>6} {'ticks':>5} "
        f"{'beat s':>7} {'stmts':>6} | {'empty ms':>8} {'best':>5} {'(burst)':>8} {'stmts':>5} "
        f"{'tx ms':>6} {'ratio':>6} {'vs 1st':>6}"
    )
    for row in report["sizes"]:
        tick, empty, busy = row["tick"], row["empty_tick"], row["empty_tick_in_flight"]
        print(
            f"{row['rows']:>9,} {tick['actions_per_s']:>8,.0f} "
            f"{row['enqueue_floor_per_s']:>8,.0f} {row['ratio_tick_to_floor']:>6.2f} "
            f"{tick['ticks']:>5} {tick['beat_seconds']:>7.1f} {tick['statements']:>6} | "
            f"{empty['ms']:>8.2f} {empty['best_ms']:>5.2f} {busy['ms']:>8.2f} "
            f"{empty['statements']:>5.0f} {row['empty_transaction_ms']:>6.2f} "
            f"{row['ratio_empty_tick_to_transaction']:>6.2f} {row['empty_tick_vs_smallest']:>6.2f}"
        )
    print(
        "tick /s: due actions claimed and enqueued per second of tick time (best run); floor:"
        " send_task one by one; beat s: until the last is handed out with one tick per period;"
        " empty ms: median empty tick once the burst is done (best: fastest), (burst) while it is"
        " in flight; tx ms: an empty transaction; ratio: empty tick / tx; vs 1st: median empty"
        " tick against the smallest table's"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[10_000, 100_000],
        help="table sizes, comma-separated (default 10000,100000)",
    )
    parser.add_argument("--full", action="store_true", help="add 1,000,000 rows")
    parser.add_argument("--due", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database-url", default=DEFAULT_DB)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS)
    parser.add_argument("--json", action="store_true", help="JSON only")
    args = parser.parse_args()
    report = run(args)
    if not args.json:
        print_table(report)
        print()
    print(json.dumps(report, indent=None if args.json else 2, default=str))


if __name__ == "__main__":
    main()
