"""Intake throughput: signed ~5 KB ``invoice.payment_failed`` webhooks over HTTP into a real
``dunning serve`` process, against the same work done in-process (the floor), in one run.

    .venv/bin/python bench/intake.py [--full] [--backends pg sqlite] [--concurrency 8 32 64]
                                     [--duration S] [--no-redis-down] [--json]

Needs Debian's ``wrk`` (``apt-get install -y wrk``; without it the script says so and exits
0): a C load generator that formats every request once (``bench/intake.lua``), so the client
does not eat the CPU it measures (one wrk thread; its share is printed). PostgreSQL at
``--pg`` (a database of its own, dropped at the end) and Redis at ``--redis`` (only that
database number is flushed); the embedded defaults (SQLite + the embedded broker) live in a
temporary data directory. The short profile takes about 90 s; ``--full`` about 5 minutes.

For each backend, the floor: what a delivery must cost, in this process, with no HTTP:
Stripe's signature check, ``json.loads``, one ``INSERT ... ON CONFLICT DO NOTHING
RETURNING`` in its own transaction, one Celery send to the broker; on one thread and on
eight (concurrent transactions share commits, as the server's requests do), before and after
the HTTP runs; the floor is the better of the two means. Then ``dunning serve`` at each
concurrency: answers 200 a second, the rate *sustained* (answered and handed to the broker:
the sends trail the answers, and the time they trail counts), p50/p99 as wrk saw them and
the bucket holding p99 in the server's own histogram, the rows stored (each 200 must be
one), the messages queued, the server's CPU per event. The ratio is sustained / floor. Then,
on PostgreSQL, the intake with Redis down (a port nothing listens on, and a Redis killed
under the running intake): every delivery must still be stored and answered 200, at once.

Each request is a new event (its own event and invoice ids) signed as wrk sends it (the
HMAC is OpenSSL's, through LuaJIT's FFI: bench/intake.lua), so a run may last any time.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
import stripe
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from worker import clock  # noqa: E402
from worker.app import DunningCelery, create_app  # noqa: E402
from worker.db import make_engine  # noqa: E402
from worker.migrate import upgrade  # noqa: E402
from worker.settings import Secret, Settings  # noqa: E402
from worker.sim.stripe_peer import INSUFFICIENT_FUNDS, CardSpec, StripePeer  # noqa: E402
from worker.webhooks.inbox import SWEEP_AFTER  # noqa: E402
from worker.webhooks.models import InboxEvent, InboxStatus  # noqa: E402

SECRET = "whsec_bench_intake"  # noqa: S105 - a test secret
LUA = REPO / "bench" / "intake.lua"
TOLERANCE_S = 300  # the intake's (Stripe's) signature tolerance
WEBHOOK = "/webhooks/stripe"
PROFILES = {
    "short": {"duration": 6.0, "floor_s": 3.0, "down_s": 4.0},
    "full": {"duration": 30.0, "floor_s": 10.0, "down_s": 15.0},
}
TICK_HZ = os.sysconf("SC_CLK_TCK")
FLOOR_THREADS = 8  # as many deliveries in flight as wrk's lowest concurrency


# ---------------------------------------------------------------------------- deliveries


def template() -> tuple[str, str, str]:
    """A realistic ``invoice.payment_failed`` event as Stripe-compatible JSON (the peer's),
    with its event id and invoice id to replace."""
    peer = StripePeer(api_key="sk_test_bench", webhook_secret=SECRET)
    card = CardSpec(outcomes=[INSUFFICIENT_FUNDS])
    customer = peer.create_customer(
        email="bench@example.test", name="Bench", card=card, timezone="UTC"
    )
    invoice, _ = peer.bill(peer.create_subscription(customer_id=customer, unit_amount=2900))
    event = next(e for e in peer.take_pending() if e["type"] == "invoice.payment_failed")
    body, _ = peer.signed_payload(event)
    return body.decode(), event["id"], invoice


class Deliveries:
    """Signed bodies with distinct event ids, by prefix."""

    def __init__(self) -> None:
        self.body, self.event_id, self.invoice_id = template()

    def make(self, prefix: str, n: int) -> Iterator[tuple[bytes, str]]:
        stamp = str(int(time.time()))
        key = SECRET.encode()
        for i in range(n):
            body = (
                self.body.replace(self.event_id, f"evt_{prefix}_{i:07d}")
                .replace(self.invoice_id, f"in_{prefix}_{i:07d}")
                .encode()
            )
            mac = hmac.new(key, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
            yield body, f"t={stamp},v1={mac}"

    def write_template(self, path: Path) -> None:
        """The body with ``@ID@`` where bench/intake.lua puts each request's ids."""
        template = self.body.replace(self.event_id, "evt_@ID@").replace(self.invoice_id, "in_@ID@")
        path.write_text(template)


# ---------------------------------------------------------------------------- backends


@dataclass
class Backend:
    name: str
    database_url: str
    broker_url: str
    data_dir: Path

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("DUNNING_", "STRIPE_"))}
        env = {**keep, "DUNNING_DATA_DIR": str(self.data_dir), "STRIPE_WEBHOOK_SECRET": SECRET}
        env["DUNNING_DATABASE_URL"] = self.database_url
        if not self.broker_url.startswith("filesystem"):
            env["DUNNING_BROKER_URL"] = self.broker_url
        return env

    def app(self) -> DunningCelery:
        return create_app(
            Settings(
                database_url=self.database_url,
                broker_url=self.broker_url,
                stripe_webhook_secret=Secret(SECRET),
                data_dir=self.data_dir,
                config_path=REPO / "config" / "dunning.toml",
            )
        )

    def queued(self) -> int:
        """Messages waiting in the broker's intake queue (nothing consumes them here)."""
        if self.broker_url.startswith("filesystem"):
            folder = self.data_dir / "broker" / "queue"
            return sum(1 for n in os.listdir(folder) if n.endswith(".intake.msg"))
        try:
            return int(redis.Redis.from_url(self.broker_url, socket_timeout=1).llen("intake"))
        except redis.RedisError:
            return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def postgres_database(admin: str) -> Iterator[str]:
    name = f"dunning_bench_intake_{os.getpid()}"
    with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{admin.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def serve(backend: Backend, log: Path) -> Iterator[tuple[str, int]]:
    """``dunning serve`` as its own process: (base URL, pid)."""
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "serve", "--port", str(port)],
            env=backend.env(),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dunning serve did not start: see {log}")
            time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        said = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        if said:  # the server's warnings are part of the result (a send that failed, ...)
            print(f"{backend.name}: dunning serve logged {len(said)} line(s), the last:")
            for line in said[-5:]:
                print(f"  {line[:200]}")


def server_buckets(url: str) -> dict[float, float]:
    """The intake's own latency histogram for deliveries: cumulative count by upper bound."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    found: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "dunning_intake_request_duration_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("route") == WEBHOOK:
                found[float(sample.labels["le"])] = sample.value
    return found


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound (ms) of the bucket holding the q-quantile of what was added."""
    added = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    total = added.get(math.inf, 0)
    for le in sorted(added):
        if total and added[le] >= q * total:
            return le * 1000
    return math.inf


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK_HZ  # utime + stime


def stored(engine: Engine, prefix: str) -> tuple[int, int]:
    """Rows stored under ``prefix`` and how many distinct event ids they hold."""
    with engine.connect() as conn:
        rows, distinct = conn.execute(
            select(func.count(), func.count(InboxEvent.event_id.distinct())).where(
                InboxEvent.event_id.like(f"evt_{prefix}_%")
            )
        ).one()
    return int(rows), int(distinct)


# ---------------------------------------------------------------------------- the floor


def floor_loop(
    backend: Backend, deliveries: Deliveries, prefix: str, seconds: float, threads: int
) -> tuple[float, float]:
    """Events/s and CPU ms per event of ``threads`` threads in this process doing only what
    a delivery needs: verify, parse, insert in its own transaction, send to the broker.
    One thread pays every round trip and commit in turn; several share commits, as the
    server's requests do."""
    engine = (
        create_engine(backend.database_url, pool_size=threads)
        if backend.database_url.startswith("postgresql")
        else make_engine(backend.database_url)
    )
    app = backend.app()
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    per_thread = int(3000 * seconds) // threads + 1
    batches = [list(deliveries.make(f"{prefix}t{t}", per_thread)) for t in range(threads)]
    done = [0] * threads
    stop = threading.Event()

    def loop(t: int) -> None:
        for body, signature in batches[t]:
            if stop.is_set():
                return
            stripe.WebhookSignature.verify_header(
                body.decode("utf-8", "replace"), signature, SECRET, TOLERANCE_S
            )
            data = json.loads(body)
            now = clock.now()
            stmt = (
                insert(InboxEvent)
                .values(
                    provider="stripe",
                    event_id=data["id"],
                    event_type=data["type"],
                    payload=body.decode(),
                    received_at=now,
                    sweep_at=now + SWEEP_AFTER,
                    status=InboxStatus.PENDING,
                    enqueue_count=1,
                )
                .on_conflict_do_nothing(index_elements=["provider", "event_id"])
                .returning(InboxEvent.id)
            )
            with engine.begin() as conn:
                inbox_id = conn.scalar(stmt)
            app.send_task("webhooks.process_event", kwargs={"inbox_id": inbox_id}, retry=False)
            done[t] += 1

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
        workers = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
        started, cpu = time.perf_counter(), time.process_time()
        timer = threading.Timer(seconds, stop.set)
        timer.start()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        timer.cancel()
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        engine.dispose()
        app.runtime.close()
    total = sum(done)
    return total / took, cpu / max(total, 1) * 1000


# ---------------------------------------------------------------------------- wrk


@dataclass
class Run:
    """One wrk run. ``events_per_s``: answered 200 a second; ``sustained_per_s``: answered
    and handed to the broker, counting the time the sends trailed the answers (the floor
    sends before it goes on, so the ratio is taken on this one)."""

    backend: str
    concurrency: int
    events_per_s: float
    sustained_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    server_p50_ms_at_most: float  # the server's own histogram: a bucket's upper bound
    server_p99_ms_at_most: float
    requests: int
    non_200: int
    socket_errors: int
    stored: int
    enqueued: int
    send_lag_s: float
    server_cpu_ms_per_event: float
    client_cpu_share: float
    floor_per_s: float = 0.0
    ratio: float = 0.0


def wrk(url: str, script_args: list[str], concurrency: int, seconds: float) -> dict[str, Any]:
    """One wrk run; its summary and the CPU seconds wrk used."""
    cmd = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "-s",
        str(LUA),
        url,
        "--",
        *script_args,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    line = next((ln for ln in out.decode().splitlines() if ln.startswith("WRK ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {out.decode()} {err.decode()}")
    summary = json.loads(line[4:])
    summary["cpu_s"] = _children_cpu()
    return summary


_last_children = [0.0]


def _children_cpu() -> float:
    """CPU seconds of children waited for since the last call (wrk, here)."""
    usage = os.times()
    total = usage.children_user + usage.children_system
    spent, _last_children[0] = total - _last_children[0], total
    return spent


@dataclass
class Target:
    """A running ``dunning serve`` and what a run needs around it."""

    backend: Backend
    engine: Engine  # to count what was stored
    deliveries: Deliveries
    url: str
    pid: int
    work: Path


def http_run(target: Target, concurrency: int, seconds: float) -> Run:
    """wrk at ``concurrency`` for ``seconds``, each request a new event signed as it is sent;
    then the rows stored and the sends that trail the answers."""
    backend, engine, work, pid = target.backend, target.engine, target.work, target.pid
    prefix = f"{backend.name[:2]}c{concurrency}_{int(time.time())}"
    template = work / "template.json"
    target.deliveries.write_template(template)
    _children_cpu()
    queued_before = backend.queued()
    buckets_before = server_buckets(target.url)
    cpu_before = cpu_seconds(pid)
    summary = wrk(target.url, [str(template), SECRET, prefix], concurrency, seconds)
    ended = time.monotonic()
    rows, distinct = stored(engine, prefix)  # every 200 was durable before it was sent
    # The sends to the broker trail the answers: wait until every row is in the queue, or
    # the queue stopped growing for five seconds (a broker that is down).
    last, still_since = -1, time.monotonic()
    while True:
        enqueued = backend.queued() - queued_before
        if enqueued >= rows:
            break
        if enqueued != last:
            last, still_since = enqueued, time.monotonic()
        elif time.monotonic() - still_since > 5.0:
            break
        time.sleep(0.05)
    send_lag = time.monotonic() - ended
    server_cpu = cpu_seconds(pid) - cpu_before
    buckets_after = server_buckets(target.url)
    duration = summary["duration_us"] / 1e6
    ok = summary["requests"] - summary["status"]
    return Run(
        backend=backend.name,
        concurrency=concurrency,
        events_per_s=round(ok / duration, 1),
        sustained_per_s=round(min(ok, enqueued) / (duration + send_lag), 1),
        p50_ms=round(summary["p50_us"] / 1000, 1),
        p99_ms=round(summary["p99_us"] / 1000, 1),
        max_ms=round(summary["max_us"] / 1000, 1),
        server_p50_ms_at_most=bucket_quantile(buckets_before, buckets_after, 0.5),
        server_p99_ms_at_most=bucket_quantile(buckets_before, buckets_after, 0.99),
        requests=summary["requests"],
        non_200=summary["status"],
        socket_errors=summary["connect"] + summary["read"] + summary["write"] + summary["timeout"],
        stored=distinct if rows == distinct else -rows,
        enqueued=enqueued,
        send_lag_s=round(send_lag, 2),
        server_cpu_ms_per_event=round(server_cpu / max(ok, 1) * 1000, 2),
        client_cpu_share=round(summary["cpu_s"] / max(server_cpu + summary["cpu_s"], 1e-9), 3),
    )


# ---------------------------------------------------------------------------- Redis down


@contextmanager
def private_redis() -> Iterator[tuple[str, Callable[[], None]]]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)

    def kill() -> None:
        proc.kill()
        proc.wait()

    try:
        yield f"redis://127.0.0.1:{port}/0", kill
    finally:
        if proc.poll() is None:
            kill()


def redis_down_runs(
    pg_url: str, deliveries: Deliveries, seconds: float, work: Path
) -> list[dict[str, Any]]:
    """The intake on PostgreSQL with its Redis gone: never there, and killed under it."""
    results = []
    engine = create_engine(pg_url)
    try:
        for how in ("never up", "killed"):
            with private_redis() as (redis_url, kill):
                if how == "never up":
                    kill()
                backend = Backend(f"redis {how}", pg_url, redis_url, work / "down")
                with serve(backend, work / f"serve-down-{how[0]}.log") as (url, pid):
                    body, signature = next(deliveries.make(f"warm{how[0]}{int(time.time())}", 1))
                    headers = {"Stripe-Signature": signature, "Content-Type": "application/json"}
                    httpx.post(f"{url}/webhooks/stripe", content=body, headers=headers)
                    if how == "killed":
                        time.sleep(0.3)  # the warm-up's send went through
                        kill()
                    target = Target(backend, engine, deliveries, url, pid, work)
                    run = http_run(target, 8, seconds)
                    ready = httpx.get(f"{url}/readyz", timeout=10)
                results.append({**asdict(run), "readyz": ready.status_code})
    finally:
        engine.dispose()
    return results


# ---------------------------------------------------------------------------- main


def measure_backend(
    backend: Backend, deliveries: Deliveries, levels: list[int], p: dict[str, float], work: Path
) -> tuple[list[Run], dict[str, Any]]:
    """The floors (one thread, and FLOOR_THREADS) before and after the HTTP runs; the ratio
    is to the higher of the two means."""
    floors: dict[str, list[tuple[float, float]]] = {"1": [], str(FLOOR_THREADS): []}

    def floor_pass(tag: str) -> None:
        for threads, measured in floors.items():
            prefix = f"f{tag}{backend.name[:2]}{threads}_{int(time.time())}"
            measured.append(floor_loop(backend, deliveries, prefix, p["floor_s"], int(threads)))

    floor_pass("a")
    engine = create_engine(backend.database_url)
    runs = []
    try:
        with serve(backend, work / f"serve-{backend.name}.log") as (url, pid):
            target = Target(backend, engine, deliveries, url, pid, work)
            http_run(target, levels[0], 1)  # warm-up: connections, first imports
            runs += [http_run(target, c, p["duration"]) for c in levels]
    finally:
        engine.dispose()
    floor_pass("b")
    summary: dict[str, Any] = {}
    for threads, measured in floors.items():
        rates = [rate for rate, _ in measured]
        summary[f"threads_{threads}"] = {
            "per_s": [round(r, 1) for r in rates],
            "mean_per_s": round(sum(rates) / len(rates), 1),
            "cpu_ms_per_event": round(sum(c for _, c in measured) / len(measured), 2),
        }
    floor = max(v["mean_per_s"] for v in summary.values())
    summary["floor_per_s"] = floor
    for run in runs:
        run.floor_per_s = floor
        run.ratio = round(run.sustained_per_s / floor, 2)
    return runs, summary


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="30 s per level, 10 s floors")
    parser.add_argument("--backends", nargs="+", default=["pg", "sqlite"], choices=["pg", "sqlite"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[8, 32, 64])
    parser.add_argument("--duration", type=float, help="seconds per concurrency level")
    parser.add_argument("--no-redis-down", action="store_true", help="skip the Redis-down runs")
    parser.add_argument(
        "--pg", default=os.environ.get("DUNNING_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
    )
    parser.add_argument(
        "--redis", default=os.environ.get("DUNNING_BENCH_REDIS", "redis://127.0.0.1:6379/7")
    )
    parser.add_argument("--json", action="store_true", help="only the JSON document")
    return parser.parse_args()


def _measure(
    name: str,
    args: argparse.Namespace,
    p: dict[str, float],
    *,
    deliveries: Deliveries,
    work: Path,
    result: dict[str, Any],
) -> list[Run]:
    """One backend's floors and runs (and, on PostgreSQL, the Redis-down runs) into
    ``result``."""
    if name == "sqlite":
        data = work / "sqlite"
        url = f"sqlite:///{data / 'dunning.db'}"
        upgrade(url)
        backend = Backend("sqlite+embedded", url, "filesystem://", data)
        runs, floor = measure_backend(backend, deliveries, args.concurrency, p, work)
    else:
        broker = redis.Redis.from_url(args.redis)
        broker.flushdb()  # our own database number only
        try:
            with postgres_database(args.pg) as url:
                backend = Backend("postgresql+redis", url, args.redis, work / "pg")
                runs, floor = measure_backend(backend, deliveries, args.concurrency, p, work)
                if not args.no_redis_down:
                    result["redis_down"] = redis_down_runs(url, deliveries, p["down_s"], work)
        finally:
            broker.flushdb()
    result["floors"][backend.name] = floor
    result["runs"] += [asdict(r) for r in runs]
    return runs


def main() -> int:
    args = _arguments()
    if shutil.which("wrk") is None:
        print("bench/intake.py needs wrk: apt-get install -y wrk (skipped)", file=sys.stderr)
        return 0
    p = dict(PROFILES["full" if args.full else "short"])
    if args.duration:
        p["duration"] = args.duration
    say = (lambda *_: None) if args.json else (lambda *a: print(*a, flush=True))
    deliveries = Deliveries()
    say(f"delivery: {len(deliveries.body.encode())} bytes, invoice.payment_failed")
    result: dict[str, Any] = {"profile": p, "cpus": os.cpu_count(), "runs": [], "floors": {}}
    work = Path(tempfile.mkdtemp(prefix="dunning-bench-intake-"))
    try:
        for name in args.backends:
            for run in _measure(name, args, p, deliveries=deliveries, work=work, result=result):
                say(_row(run))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_table(result))
        print(json.dumps(result))
    return 0


HEADER = (
    f"{'backend':<18}{'conc':>5}{'events/s':>10}{'sustained':>10}{'p50 ms':>8}{'p99 ms':>8}"
    f"{'non-200':>8}"
    f"{'srv p99':>8}{'stored':>8}{'queued':>8}{'lag s':>7}{'cpu ms/ev':>10}{'floor/s':>9}"
    f"{'ratio':>7}"
)


def _row(r: Run | dict[str, Any]) -> str:
    d = asdict(r) if isinstance(r, Run) else r
    return (
        f"{d['backend']:<18}{d['concurrency']:>5}{d['events_per_s']:>10.1f}"
        f"{d['sustained_per_s']:>10.1f}{d['p50_ms']:>8.1f}"
        f"{d['p99_ms']:>8.1f}{d['non_200']:>8}{'<=' + format(d['server_p99_ms_at_most'], 'g'):>8}"
        f"{d['stored']:>8}{d['enqueued']:>8}"
        f"{d['send_lag_s']:>7.1f}"
        f"{d['server_cpu_ms_per_event']:>10.2f}{d['floor_per_s']:>9.1f}{d['ratio']:>7.2f}"
    )


def _table(result: dict[str, Any]) -> str:
    lines = ["", HEADER]
    lines += [_row(r) for r in result["runs"]]
    for name, floor in result["floors"].items():
        for key, value in floor.items():
            if key.startswith("threads_"):
                lines.append(
                    f"floor {name}, {key.removeprefix('threads_')} thread(s): "
                    f"{value['mean_per_s']}/s (runs {value['per_s']}), "
                    f"{value['cpu_ms_per_event']} CPU ms/event"
                )
    for down in result.get("redis_down", []):
        lines.append(
            f"{down['backend']}: {down['events_per_s']} events/s, p50 {down['p50_ms']} ms, "
            f"p99 {down['p99_ms']} ms, max {down['max_ms']} ms, non-200 {down['non_200']}, "
            f"stored {down['stored']} of {down['requests']}, /readyz {down['readyz']}"
        )
    cpu = [r["client_cpu_share"] for r in result["runs"]]
    if cpu:
        lines.append(f"wrk's share of the CPU the client and server used: at most {max(cpu):.0%}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
