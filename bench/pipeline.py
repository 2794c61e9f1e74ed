"""The processing pipeline against its floors: a backlog of stored failed-payment events
drained by the real ``dunning worker`` (prefork, concurrency 2) on PostgreSQL and Redis.

    .venv/bin/python bench/pipeline.py [--events 2000] [--scale 0] [--rss-events 0] [--json]

Measured in one run, on one broker and one database, by the same worker process:

- ``noop``: the no-op Celery task (``bench/pipeline_floor.py``): what Celery costs per task;
- ``transition``: a realistic 4-statement transition task (lock the case, update it, append a
  transition, write an outbox row), one transaction;
- ``events``: ``invoice.payment_failed`` / ``invoice.payment_action_required`` events whose
  payload carries the decline (API ``2024-06-20`` with the PaymentIntent expanded): no Stripe
  call;
- ``events+peer``: the same events as Stripe sends them today (``2025-03-31.basil``: the
  invoice names no payment), so each one asks the Stripe-compatible peer
  (``worker/sim/stripe_peer.py``, served from this process) for its decline: two requests.

Events are made by the peer: one customer, subscription and invoice each, cards of several
brands, amounts and currencies, and the decline mix of ``bench/recovery.py`` (insufficient
funds, do-not-honor, generic, processing, expired, incorrect number, authentication, fraud,
revocation). They are stored in the inbox and their tasks pushed while the worker's consumer
is cancelled; the clock runs from the moment it consumes again until the broker holds no
message (queued or unacknowledged). Each phase starts with a short warm-up.

Statements per event are counted in this process (a SQLAlchemy ``before_cursor_execute``
listener) over a separate sample run through ``process_stored_event``, as the task runs it.

``--scale N`` first loads N closed cases (customers, subscriptions, invoices, cases, their
actions and attempts) so the per-event cost can be compared at 10 k and 1 M cases.
``--rss-events N`` adds a long phase of N events (no peer) and reports the worker's resident
memory (the main process and its two pool processes) as it goes.

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust) and Redis (``--redis``, default
database 6, which is flushed): ``make services`` starts both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
from sqlalchemy import event, func, select, text
from sqlalchemy.engine import Engine

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from worker.app import create_app  # noqa: E402
from worker.billing.stripe_client import StripeGateway  # noqa: E402
from worker.config import load_policy  # noqa: E402
from worker.db import make_engine  # noqa: E402
from worker.migrate import upgrade  # noqa: E402
from worker.runtime import Runtime  # noqa: E402
from worker.settings import Secret, Settings  # noqa: E402
from worker.sim.stripe_peer import (  # noqa: E402
    AUTHENTICATION_REQUIRED,
    DO_NOT_HONOR,
    EXPIRED_CARD,
    INSUFFICIENT_FUNDS,
    PROCESSING_ERROR,
    STOLEN_CARD,
    CardSpec,
    Decline,
    StripePeer,
)
from worker.webhooks.inbox import store_event  # noqa: E402
from worker.webhooks.models import InboxEvent, InboxStatus  # noqa: E402
from worker.webhooks.service import process_stored_event  # noqa: E402

PG = os.environ.get("DUNNING_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
DATABASE = "dunning_bench_pipeline"
API_KEY = "sk_test_pipeline"
QUEUES = ("intake", "payments", "emails", "scheduler")

# The decline mix of bench/recovery.py (shares of failed invoices).
DECLINES: list[tuple[Decline, float]] = [
    (INSUFFICIENT_FUNDS, 40),
    (
        Decline(
            decline_code="insufficient_funds",
            advice_code="try_again_later",
            network_decline_code="51",
            network_advice_code="25",
        ),
        4,
    ),
    (DO_NOT_HONOR, 18),
    (Decline(decline_code="generic_decline"), 8),
    (PROCESSING_ERROR, 5),
    (EXPIRED_CARD, 12),
    (
        Decline(
            code="incorrect_number",
            decline_code="incorrect_number",
            advice_code="confirm_card_data",
            network_decline_code="14",
        ),
        2,
    ),
    (AUTHENTICATION_REQUIRED, 5),
    (STOLEN_CARD, 2),
    (
        Decline(
            decline_code="fraudulent", advice_code="do_not_try_again", network_decline_code="59"
        ),
        2,
    ),
    (
        Decline(
            decline_code="revocation_of_authorization",
            advice_code="do_not_try_again",
            network_decline_code="R1",
            network_advice_code="21",
        ),
        2,
    ),
]
BRANDS = [("visa", 55), ("mastercard", 35), ("amex", 10)]
PRICES = {"usd": [900, 2900, 4900, 9900, 24900], "eur": [1900, 4900], "gbp": [1500, 3900]}
CURRENCIES = [("usd", 70), ("eur", 20), ("gbp", 10)]


def _pick(rng: random.Random, weighted: list[tuple[Any, float]]) -> Any:
    return rng.choices([v for v, _ in weighted], weights=[w for _, w in weighted])[0]


# --- the events ---------------------------------------------------------------------------------


def failed_payments(peer: StripePeer, n: int, rng: random.Random) -> list[dict[str, Any]]:
    """``n`` customers, each with a subscription whose first renewal the peer declines: the
    failure events it sends (invoice.payment_failed, or payment_action_required)."""
    for i in range(n):
        currency = _pick(rng, CURRENCIES)
        card = CardSpec(
            brand=_pick(rng, BRANDS),
            last4=f"{rng.randrange(10_000):04d}",
            exp_month=rng.randint(1, 12),
            exp_year=rng.randint(2027, 2031),
            outcomes=[_pick(rng, DECLINES)],
        )
        customer = peer.create_customer(email=f"customer{i}@example.com", name=f"C{i}", card=card)
        sub = peer.create_subscription(
            customer_id=customer, unit_amount=rng.choice(PRICES[currency]), currency=currency
        )
        peer.bill(sub)
    return peer.take_pending()


def carried(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The failure events of an ``acacia`` peer, with the PaymentIntent expanded into the
    invoice (``data.object.payment_intent``): the decline travels in the payload."""
    intents = {
        e["data"]["object"]["id"]: e["data"]["object"]
        for e in events
        if e["type"] in ("payment_intent.payment_failed", "payment_intent.requires_action")
    }
    out = []
    for e in events:
        if e["type"] not in ("invoice.payment_failed", "invoice.payment_action_required"):
            continue
        inv = e["data"]["object"]
        if isinstance(inv.get("payment_intent"), str) and inv["payment_intent"] in intents:
            inv["payment_intent"] = intents[inv["payment_intent"]]
        out.append(e)
    return out


def failures(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if e["type"] in ("invoice.payment_failed", "invoice.payment_action_required")
    ]


_ID = re.compile(r"^(?:cus|sub|in|ch|pi|pm|evt|il|si|price|prod)_[A-Za-z0-9]+$")


def clones(templates: list[dict[str, Any]], n: int, prefix: str = "x") -> Iterator[bytes]:
    """``n`` distinct events made from ``templates``: every object id (customer, invoice,
    subscription, charge, card, event...) and card fingerprint made unique per copy."""

    def rename(value: Any, tag: str) -> Any:
        if isinstance(value, dict):
            return {
                k: (v + tag if k == "fingerprint" and isinstance(v, str) else rename(v, tag))
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [rename(v, tag) for v in value]
        if isinstance(value, str) and _ID.match(value):
            return value + tag
        return value

    for i in range(n):
        yield json.dumps(rename(templates[i % len(templates)], f"{prefix}{i}")).encode()


# --- the database and the broker -----------------------------------------------------------------


def recreate_database(name: str) -> str:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    upgrade(url)
    return url


def store(engine: Engine, bodies: list[bytes]) -> list[int]:
    """Store the events in the inbox as the intake does; their inbox ids."""
    from sqlalchemy.orm import Session

    ids = []
    now = _now()
    with Session(engine) as session, session.begin():
        for body in bodies:
            stored = store_event(session, provider="stripe", body=body, now=now)
            assert stored.inbox_id is not None  # noqa: S101 - distinct ids
            ids.append(stored.inbox_id)
    return ids


def _now() -> Any:
    from worker import clock

    return clock.now()


def make_cases(engine: Engine, n: int, tag: str) -> list[int]:
    """``n`` open cases for the transition floor (one customer and invoice each)."""
    with engine.begin() as conn:
        first = conn.scalar(text("SELECT coalesce(max(id), 0) FROM customers")) or 0
        conn.execute(
            text(
                "INSERT INTO customers (provider, provider_id, updated_at) "
                "SELECT 'stripe', :tag || g, now() FROM generate_series(1, :n) g"
            ),
            {"tag": f"cus_{tag}_", "n": n},
        )
        conn.execute(
            text(
                "INSERT INTO invoices (provider, provider_id, customer_id, amount_due, "
                "amount_paid, currency, attempt_count, status, as_of) "
                "SELECT 'stripe', :tag || c.id, c.id, 4900, 0, 'usd', 1, 'open', now() "
                "FROM customers c WHERE c.id > :first"
            ),
            {"tag": f"in_{tag}_", "first": first},
        )
        rows = conn.execute(
            text(
                "INSERT INTO dunning_cases (invoice_id, customer_id, state, retries_mode, "
                "policy_version, opened_at, window_ends_at, updated_at, paused_seconds) "
                "SELECT i.id, i.customer_id, 'retrying', 'own', 'bench', now(), "
                "now() + interval '14 days', now(), 0 FROM invoices i "
                "WHERE i.customer_id > :first RETURNING id"
            ),
            {"first": first},
        )
        return [r[0] for r in rows]


def load_scale(engine: Engine, n: int) -> None:
    """``n`` cases of earlier months, as a database holds after a while: per case a
    customer, a subscription, an invoice, six actions (two planned far ahead), a failed
    attempt, a transition."""
    if n <= 0:
        return
    statements = [
        "INSERT INTO customers (provider, provider_id, updated_at, timezone) "
        "SELECT 'stripe', 'cus_old' || g, now(), 'Europe/Paris' FROM generate_series(1, :n) g",
        "INSERT INTO subscriptions (provider, provider_id, customer_id, status, mrr, as_of) "
        "SELECT 'stripe', 'sub_old' || c.id, c.id, 'active', 4900, now() FROM customers c "
        "WHERE c.provider_id LIKE 'cus_old%'",
        "INSERT INTO invoices (provider, provider_id, customer_id, subscription_id, amount_due, "
        "amount_paid, currency, attempt_count, status, as_of) "
        "SELECT 'stripe', 'in_old' || s.id, s.customer_id, s.id, 4900, 0, 'usd', 1, 'open', "
        "now() FROM subscriptions s WHERE s.provider_id LIKE 'sub_old%'",
        "INSERT INTO dunning_cases (invoice_id, customer_id, state, retries_mode, "
        "policy_version, opened_at, window_ends_at, updated_at, paused_seconds, decline_class) "
        "SELECT i.id, i.customer_id, CASE WHEN i.id % 5 = 0 THEN 'retrying' ELSE 'recovered' "
        "END, 'own', 'old', now() - interval '20 days', now() + interval '1 day', now(), 0, "
        "'soft' FROM invoices i WHERE i.provider_id LIKE 'in_old%'",
        "INSERT INTO scheduled_actions (case_id, customer_id, kind, due_at, status, "
        "idempotency_key, reason, created_at, claims, ops_requested) "
        "SELECT c.id, c.customer_id, k.kind, now() + (k.n || ' days')::interval, "
        "CASE WHEN c.state = 'retrying' AND k.n > 3 THEN 'planned' ELSE 'done' END, "
        "'old:' || c.id || ':' || k.n, 'old', now(), 1, false FROM dunning_cases c "
        "CROSS JOIN (VALUES (1, 'send_email'), (2, 'retry_payment'), (3, 'send_email'), "
        "(4, 'retry_payment'), (5, 'send_email'), (6, 'final_action')) AS k(n, kind)",
        "INSERT INTO payment_attempts (provider, invoice_id, source, outcome, occurred_at, "
        "amount, currency, charge_id, payment_intent_id, decline_code, card_brand, "
        "card_fingerprint, payment_method_id, counted) "
        "SELECT 'stripe', i.id, 'provider', 'failed', now() - interval '20 days', 4900, 'usd', "
        "'ch_old' || i.id, 'pi_old' || i.id, 'insufficient_funds', 'visa', 'fp_old' || i.id, "
        "'pm_old' || i.id, true FROM invoices i WHERE i.provider_id LIKE 'in_old%'",
        "INSERT INTO case_transitions (case_id, at, event, from_state, to_state) "
        "SELECT id, now(), 'payment_failed', 'open', 'retrying' FROM dunning_cases",
    ]
    with engine.begin() as conn:
        for sql in statements:
            conn.execute(text(sql), {"n": n})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def broker_backlog(r: redis.Redis) -> int:
    """Messages queued or handed to the worker and not acknowledged yet."""
    queued = sum(int(r.llen(q)) for q in QUEUES)  # type: ignore[arg-type]
    return queued + int(r.hlen("unacked"))  # type: ignore[arg-type]


# --- CPU and memory of the processes ------------------------------------------------------------


def _ticks(pid: int) -> int:
    try:
        fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields_[11]) + int(fields_[12])  # utime + stime


def tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = (task / "children").read_text().split()
                todo.extend(int(k) for k in kids)
    return found


def cpu_seconds(pids: list[int]) -> float:
    return sum(_ticks(p) for p in pids) / os.sysconf("SC_CLK_TCK")


def rss_mb(pids: list[int]) -> float:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def backends(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        me = conn.scalar(text("SELECT pg_backend_pid()"))
        rows = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        )
        return [r[0] for r in rows if r[0] != me]


# --- the worker ----------------------------------------------------------------------------------


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    app: Any

    def pause(self) -> None:
        for queue in QUEUES:
            self.app.control.cancel_consumer(queue, reply=True, limit=1, timeout=10)

    def resume(self) -> None:
        for queue in QUEUES:
            self.app.control.add_consumer(queue, reply=True, limit=1, timeout=10)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def running_worker(settings: Settings, data_dir: Path) -> Iterator[Worker]:
    """The real ``dunning worker`` (prefork, two processes) with the floor tasks loaded."""
    assert settings.stripe_api_key is not None  # noqa: S101 - set by the caller
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DUNNING_", "STRIPE_"))},
        "DUNNING_DATABASE_URL": settings.database_url,
        "DUNNING_BROKER_URL": settings.broker_url,
        "DUNNING_DATA_DIR": str(data_dir),
        "STRIPE_API_KEY": settings.stripe_api_key.reveal(),
        "STRIPE_API_BASE": settings.stripe_api_base or "",
        "PYTHONPATH": os.pathsep.join([str(REPO / "bench"), str(REPO)]),
    }
    command = [sys.executable, "-m", "worker", "worker", "--pool", "prefork"]
    command += ["--concurrency", "2", "--include", "pipeline_floor"]
    log = (data_dir / "worker.log").open("wb")
    proc = subprocess.Popen(  # noqa: S603 - our own CLI
        command, env=env, cwd=data_dir, stdout=log, stderr=subprocess.STDOUT
    )
    app = create_app(settings, Runtime(settings))
    worker = Worker(proc, app)
    try:
        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=1):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start; see {data_dir / 'worker.log'}")
        yield worker
    finally:
        worker.stop()
        log.close()


@dataclass
class Phase:
    name: str
    tasks: int
    seconds: float
    worker_cpu: float
    db_cpu: float
    rss_mb: list[tuple[int, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds if self.seconds else 0.0


def drain(
    name: str,
    worker: Worker,
    r: redis.Redis,
    engine: Engine,
    send: Callable[[], int],
    *,
    timeout: float,
    sample_rss: bool = False,
) -> Phase:
    """Push the backlog ``send`` makes with the consumer cancelled, then time the worker
    draining it."""
    worker.pause()
    n = send()
    pids_pg = backends(engine)
    pids_w = tree(worker.proc.pid)
    cpu_w0, cpu_pg0 = cpu_seconds(pids_w), cpu_seconds(pids_pg)
    samples: list[tuple[int, float]] = []
    start = time.perf_counter()
    worker.resume()
    last_sample = 0.0
    while True:
        left = broker_backlog(r)
        now = time.perf_counter()
        if sample_rss and now - last_sample >= 2:
            samples.append((n - left, rss_mb(tree(worker.proc.pid))))
            last_sample = now
        if left == 0:
            break
        if now - start > timeout:
            raise RuntimeError(f"{name}: {left} of {n} tasks left after {timeout:.0f} s")
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    pids_pg = list({*pids_pg, *backends(engine)})
    cpu_w = cpu_seconds(tree(worker.proc.pid)) - cpu_w0
    cpu_pg = cpu_seconds(pids_pg) - cpu_pg0
    if sample_rss:
        samples.append((n, rss_mb(tree(worker.proc.pid))))
    return Phase(name, n, seconds, cpu_w, cpu_pg, samples)


# --- statements per event, in this process --------------------------------------------------------


def statements_per_event(
    url: str, bodies: list[bytes], gateway: StripeGateway | None
) -> tuple[float, float, Counter[str]]:
    """Run the events through ``process_stored_event`` here: (statements per event, ms per
    event, statements by their first words)."""
    settings = Settings(database_url=url)
    runtime = Runtime(settings, policy=load_policy(settings.config_path), gateway=gateway)
    ids = store(runtime.engine, bodies)
    kinds: Counter[str] = Counter()

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        kinds[_statement_kind(statement)] += 1

    # warm up (first compiles, the policy row) on the first few, count the rest
    warm = min(10, len(ids) // 5)
    for inbox_id in ids[:warm]:
        process_stored_event(runtime, inbox_id)
    event.listen(runtime.engine, "before_cursor_execute", count)
    start = time.perf_counter()
    for inbox_id in ids[warm:]:
        process_stored_event(runtime, inbox_id)
    ms = (time.perf_counter() - start) * 1000 / (len(ids) - warm)
    event.remove(runtime.engine, "before_cursor_execute", count)
    with runtime.session() as session:
        statuses = Counter(
            s.value
            for s in session.scalars(select(InboxEvent.status).where(InboxEvent.id.in_(ids)))
        )
    runtime.close()
    if statuses.get(InboxStatus.PROCESSED.value, 0) != len(ids):
        raise RuntimeError(f"in-process sample not all processed: {dict(statuses)}")
    return sum(kinds.values()) / (len(ids) - warm), ms, kinds


_TABLE = re.compile(r"^(?:SELECT\b.*?\bFROM|INSERT INTO|UPDATE|DELETE FROM)\s+(\w+)", re.S)


def _statement_kind(statement: str) -> str:
    """``SELECT customers``, ``INSERT scheduled_actions``, ``SAVEPOINT``..."""
    verb = statement.split(None, 1)[0]
    table = _TABLE.match(statement)
    return f"{verb} {table.group(1)}" if table else verb


# --- the run ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="events per phase")
    parser.add_argument("--floor-tasks", type=int, default=0, help="default: as --events")
    parser.add_argument("--sample", type=int, default=200, help="in-process statement sample")
    parser.add_argument("--scale", type=int, default=0, help="load this many cases first")
    parser.add_argument("--rss-events", type=int, default=0, help="a long memory phase")
    parser.add_argument("--no-peer", action="store_true", help="skip the events+peer phase")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/6")
    parser.add_argument("--database", default=DATABASE)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--json", action="store_true", help="JSON only")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print_table(result)
    print(json.dumps(result))


def say(args: argparse.Namespace, message: str) -> None:
    if not args.json:
        print(message, file=sys.stderr, flush=True)


@dataclass
class Backlogs:
    """What the phases drain: stored-event bodies and the peer's own (basil) events."""

    plain: list[bytes]
    peer: list[bytes]
    templates: list[dict[str, Any]]


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    n, floor_n = args.events, args.floor_tasks or args.events
    warm = max(20, n // 50)
    r = redis.Redis.from_url(args.redis)
    r.flushdb()
    url = recreate_database(args.database)
    engine = make_engine(url)
    if args.scale:
        say(args, f"database {args.database}: loading {args.scale:,} cases")
    load_scale(engine, args.scale)

    say(args, "making events with the Stripe-compatible peer")
    acacia = StripePeer(api_key=API_KEY, api_shape="acacia")
    templates = carried(failed_payments(acacia, 400, rng))
    acacia.close()
    peer = StripePeer(api_key=API_KEY)  # basil: Stripe's shape today
    peer_events = (
        failures(failed_payments(peer, n + warm + args.sample, rng)) if not args.no_peer else []
    )
    bodies = list(clones(templates, n + warm + args.sample))
    sample_plain, bodies = bodies[: args.sample], bodies[args.sample :]
    sample_peer = [json.dumps(e).encode() for e in peer_events[: args.sample]]
    backlogs = Backlogs(
        bodies, [json.dumps(e).encode() for e in peer_events[args.sample :]], templates
    )
    result: dict[str, Any] = {
        "events": n,
        "floor_tasks": floor_n,
        "scale_cases": args.scale,
        "event_bytes": sum(map(len, bodies)) // len(bodies),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
    }
    with peer.serve() as peer_url:
        say(args, "counting statements in process")
        spe, ms, kinds = statements_per_event(url, sample_plain, None)
        result["in_process"] = {
            "statements_per_event": round(spe, 2),
            "ms_per_event": round(ms, 2),
            "statements": dict(kinds.most_common()),
        }
        if sample_peer:
            gateway = StripeGateway(API_KEY, api_base=peer_url)
            spe_p, ms_p, kinds_p = statements_per_event(url, sample_peer, gateway)
            result["in_process_peer"] = {
                "statements_per_event": round(spe_p, 2),
                "ms_per_event": round(ms_p, 2),
                "statements": dict(kinds_p.most_common()),
            }
        with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
            data_dir = Path(tmp)
            settings = Settings(
                database_url=url,
                broker_url=args.redis,
                data_dir=data_dir,
                stripe_api_key=Secret(API_KEY),
                stripe_api_base=peer_url,
            )
            with running_worker(settings, data_dir) as worker:
                phases = run_phases(args, worker, engine, r, backlogs)
    result["phases"] = {
        p.name: {
            "tasks": p.tasks,
            "seconds": round(p.seconds, 2),
            "per_second": round(p.rate, 1),
            "worker_cpu_ms_per_task": round(p.worker_cpu * 1000 / p.tasks, 2),
            "postgres_cpu_ms_per_task": round(p.db_cpu * 1000 / p.tasks, 2),
            **({"rss_mb": [[k, round(v, 1)] for k, v in p.rss_mb]} if p.rss_mb else {}),
            **p.extra,
        }
        for p in phases
    }
    rates = {p.name: p.rate for p in phases}
    result["ratios"] = {
        f"{name}/{floor}": round(rates[name] / rates[floor], 3)
        for name in ("events", "events+peer")
        if name in rates
        for floor in ("noop", "transition")
    }
    return result


def run_phases(
    args: argparse.Namespace, worker: Worker, engine: Engine, r: redis.Redis, backlogs: Backlogs
) -> list[Phase]:
    n, floor_n = args.events, args.floor_tasks or args.events
    warm = max(20, n // 50)
    app = worker.app

    def send_tasks(name: str, kwargs: list[dict[str, Any]]) -> Callable[[], int]:
        def send() -> int:
            with app.producer_or_acquire() as producer:
                for kw in kwargs:
                    app.send_task(name, kwargs=kw, producer=producer)
            return len(kwargs)

        return send

    def send_events(chunk: list[bytes]) -> Callable[[], int]:
        def send() -> int:
            ids = store(engine, chunk)
            return send_tasks("webhooks.process_event", [{"inbox_id": i} for i in ids])()

        return send

    def phase(name: str, backlog: tuple[Callable[[], int], Callable[[], int]]) -> Phase:
        warm_send, send = backlog
        say(args, f"{name}: warm-up")
        drain(f"{name} warm-up", worker, r, engine, warm_send, timeout=300)
        say(args, f"{name}: draining")
        found = drain(name, worker, r, engine, send, timeout=max(600, n))
        say(args, f"{name}: {found.rate:.0f}/s")
        return found

    noop = [{} for _ in range(floor_n + warm)]
    cases = [{"case_id": c} for c in make_cases(engine, floor_n + warm, "floor")]
    plain, peer = backlogs.plain, backlogs.peer
    phases = [
        phase(
            "noop", (send_tasks("bench.noop", noop[:warm]), send_tasks("bench.noop", noop[warm:]))
        ),
        phase(
            "transition",
            (
                send_tasks("bench.transition", cases[:warm]),
                send_tasks("bench.transition", cases[warm:]),
            ),
        ),
        phase("events", (send_events(plain[:warm]), send_events(plain[warm : warm + n]))),
    ]
    phases[-1].extra = inbox_outcome(engine)
    if peer:
        phases.append(phase("events+peer", (send_events(peer[:warm]), send_events(peer[warm:]))))
        phases[-1].extra = inbox_outcome(engine)
    if args.rss_events:
        say(args, f"memory: {args.rss_events:,} events")
        more = list(clones(backlogs.templates, args.rss_events, prefix="m"))
        phases.append(
            drain(
                "memory",
                worker,
                r,
                engine,
                send_events(more),
                timeout=max(3600, args.rss_events),
                sample_rss=True,
            )
        )
    return phases


def inbox_outcome(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = conn.execute(select(InboxEvent.status, func.count()).group_by(InboxEvent.status))
        return {"inbox": {status.value: count for status, count in rows}}


def print_table(result: dict[str, Any]) -> None:
    phases = result["phases"]
    print(
        f"\n{result['events']:,} events per phase, {result['event_bytes']:,} B each; "
        f"{result['scale_cases']:,} cases loaded first; {result['cpus']} CPUs, "
        f"load {result['load_average']:.1f} at start"
    )
    print(f"{'phase':<12} {'tasks':>7} {'s':>7} {'per s':>8} {'worker ms':>10} {'pg ms':>7}")
    for name, p in phases.items():
        print(
            f"{name:<12} {p['tasks']:>7} {p['seconds']:>7.1f} {p['per_second']:>8.1f} "
            f"{p['worker_cpu_ms_per_task']:>10.2f} {p['postgres_cpu_ms_per_task']:>7.2f}"
        )
    for key, ratio in result["ratios"].items():
        print(f"ratio {key:<24} {ratio:.3f}")
    inproc = result["in_process"]
    print(
        f"statements per event (in process): {inproc['statements_per_event']} "
        f"({inproc['ms_per_event']} ms each)"
        + (
            f"; with the peer {result['in_process_peer']['statements_per_event']} "
            f"({result['in_process_peer']['ms_per_event']} ms)"
            if "in_process_peer" in result
            else ""
        )
    )
    if "memory" in phases:
        samples = phases["memory"]["rss_mb"]
        print(
            f"worker RSS over {phases['memory']['tasks']:,} events: start "
            f"{samples[0][1]:.0f} MB, peak {max(s for _, s in samples):.0f} MB, end "
            f"{samples[-1][1]:.0f} MB"
        )


if __name__ == "__main__":
    main()
