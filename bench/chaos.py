"""Chaos suite: the real processes (`dunning serve`, `dunning worker`) on a private
PostgreSQL and Redis this script starts on free ports, a Stripe-compatible peer and an SMTP
server, and faults injected while traffic flows. Each scenario prints what was sent, the
invariant, what was observed, and PASS or FAIL; the exit status is 1 if any failed.

    .venv/bin/python bench/chaos.py [--profile short|full] [--only NAME ...] [--json]

The scheduler tick runs in this process, every second (the shipped beat ticks every 10 s);
it hands a lost claim out again after 5 s instead of 15 min, so a killed worker's charge is
retried within the run. Everything else is the shipped code and configuration, except the
policy's minimum gap (0: retries on one card may follow each other at once here).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller
from sqlalchemy import func, select

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from worker import clock  # noqa: E402
from worker.app import DunningCelery, create_app  # noqa: E402
from worker.dunning import scheduler  # noqa: E402
from worker.dunning.models import ActionKind, ActionStatus, DunningCase, ScheduledAction  # noqa: E402
from worker.dunning.operations import retry_now  # noqa: E402
from worker.dunning.state import TERMINAL, DunningState  # noqa: E402
from worker.migrate import upgrade  # noqa: E402
from worker.settings import Secret, Settings  # noqa: E402
from worker.sim.stripe_peer import INSUFFICIENT_FUNDS, SUCCEED, CardSpec, StripePeer  # noqa: E402
from worker.webhooks.models import InboxEvent, InboxStatus, RejectedDelivery  # noqa: E402
from worker.webhooks.tasks import tick_once  # noqa: E402

API_KEY, SECRET = "sk_test_chaos", "whsec_chaos"
PROFILES: dict[str, dict[str, Any]] = {
    # CI: the scenarios that need no minute-long back-off to play out.
    "short": {
        "customers": 12,
        "kills": 6,
        "outage_s": 6,
        "malformed": 600,
        "storm": 6,
        "two_s": 6,
        "scenarios": ["duplicates", "kills", "postgres", "malformed", "two"],
    },
    "full": {
        "customers": 60,
        "kills": 24,
        "outage_s": 45,
        "malformed": 10_000,
        "storm": 30,
        "two_s": 300,
    },
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(Exception):
            value = predicate()
            if value:
                return value
        time.sleep(0.2)
    raise TimeoutError(what)


# ---------------------------------------------------------------------------- services


class Postgres:
    """A private server in a temporary folder, on its own port (as the ``postgres`` user
    when this runs as root: PostgreSQL refuses to run as root)."""

    def __init__(self, root: Path, *, also_on: str | None = None) -> None:
        """``also_on``: another address to listen on (a bridge other hosts reach), trusted
        from its /24."""
        self.dir, self.port = Path(tempfile.mkdtemp(prefix="dunning-chaos-pg-")), free_port()
        self.listen = ",".join(filter(None, ["127.0.0.1", also_on]))
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-A", "trust", "-U", "postgres", "-D", str(self.dir / "data"))
        if also_on:
            subnet = also_on.rsplit(".", 1)[0] + ".0/24"
            with (self.dir / "data" / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {subnet} trust\n")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "chaos")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/chaos"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True)

    def _ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-w", *args)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses={self.listen}"
        opts += " -c max_connections=200"
        self._ctl("-o", opts, "-l", str(self.dir / "log"), "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")


class Redis:
    def __init__(self, *, also_on: str | None = None) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.bind = ["127.0.0.1", *([also_on] if also_on else [])]
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                *("--port", str(self.port), "--save", "", "--appendonly", "no"),
                *("--bind", *self.bind, "--protected-mode", "no"),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for(lambda: socket.create_connection(("127.0.0.1", self.port), 0.2), 10, "redis")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


class Mail:
    """An SMTP server that records what it accepts, by message key."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.keys: Counter[str] = Counter()
        self.host, self.port = host, free_port()
        self.busy = 0  # the next this-many recipients get 451
        self.controller = Controller(self, hostname=host, port=self.port)
        self.controller.start()

    def down(self) -> None:
        self.controller.stop()

    def up(self) -> None:
        self.controller = Controller(self, hostname=self.host, port=self.port)
        self.controller.start()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.busy > 0:
            self.busy -= 1
            return "451 4.3.0 Mailbox temporarily unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        for line in envelope.content.decode(errors="replace").splitlines():
            if line.startswith("X-Dunning-Key:"):
                self.keys[line.split(":", 1)[1].strip()] += 1
        return "250 OK"


# ---------------------------------------------------------------------------- the system


@dataclass
class System:
    root: Path
    pg: Postgres
    redis: Redis
    peer: StripePeer
    peer_url: str
    mail: Mail
    app: DunningCelery
    intake_url: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ticking: threading.Event = field(default_factory=threading.Event)

    def env(self) -> dict[str, str]:
        policy = self.root / "policy.toml"
        if not policy.exists():
            text = (REPO / "config" / "dunning.toml").read_text()
            policy.write_text(text.replace("min_gap_hours = 1", "min_gap_hours = 0", 1))
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("DUNNING_", "STRIPE_"))}
        return {
            **keep,
            "DUNNING_DATABASE_URL": self.pg.url,
            "DUNNING_BROKER_URL": self.redis.url,
            "DUNNING_CONFIG": str(policy),
            "DUNNING_SMTP_URL": f"smtp://127.0.0.1:{self.mail.port}",
            "DUNNING_DATA_DIR": str(self.root / "data"),
            "STRIPE_API_KEY": API_KEY,
            "STRIPE_WEBHOOK_SECRET": SECRET,
            "STRIPE_API_BASE": self.peer_url,
            "STRIPE_TIMEOUT_SECONDS": "2",  # so a slow answer times out within the run
        }

    def spawn(self, name: str, *args: str) -> None:
        log = (self.root / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "worker", *args],
            env=self.env(),
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def start_worker(self, name: str = "worker") -> None:
        self.spawn(name, "worker", "--pool=solo", "--loglevel=WARNING", f"--hostname={name}@chaos")

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()

    def session(self) -> Any:
        return self.app.runtime.session()

    def post(self, body: bytes, signature: str | None) -> tuple[int, float]:
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["Stripe-Signature"] = signature
        started = time.monotonic()
        try:
            code = httpx.post(
                f"{self.intake_url}/webhooks/stripe", content=body, headers=headers, timeout=30
            ).status_code
        except httpx.HTTPError:
            code = 0  # no answer
        return code, time.monotonic() - started

    def deliver(self, event: dict[str, Any]) -> tuple[int, float]:
        body, signature = self.peer.signed_payload(event)
        return self.post(body, signature)

    def settle(self, timeout: float = 90) -> None:
        """Wait until no event is pending and no action is due or running."""

        def quiet() -> bool:
            with self.session() as s:
                pending = s.scalar(
                    select(func.count())
                    .select_from(InboxEvent)
                    .where(InboxEvent.status == InboxStatus.PENDING)
                )
                busy = s.scalar(
                    select(func.count())
                    .select_from(ScheduledAction)
                    .where(
                        ScheduledAction.kind == ActionKind.RETRY_PAYMENT,
                        ScheduledAction.status.in_([ActionStatus.PLANNED, ActionStatus.CLAIMED]),
                        ScheduledAction.due_at <= clock.now() + timedelta(minutes=2),
                    )
                )
            return pending == 0 and busy == 0

        wait_for(quiet, timeout, "the pipeline to go quiet")


@contextmanager
def system(root: Path) -> Iterator[System]:
    pg, redis_ = Postgres(root), Redis()
    upgrade(pg.url)
    mail = Mail()
    peer = StripePeer(api_key=API_KEY, webhook_secret=SECRET)
    with peer.serve() as peer_url:
        settings = Settings(
            database_url=pg.url,
            broker_url=redis_.url,
            stripe_api_key=Secret(API_KEY),
            stripe_webhook_secret=Secret(SECRET),
            stripe_api_base=peer_url,
            data_dir=root / "data",
        )
        sys_ = System(root, pg, redis_, peer, peer_url, mail, create_app(settings))
        port = free_port()
        sys_.intake_url = f"http://127.0.0.1:{port}"
        sys_.spawn("serve", "serve", "--port", str(port))
        sys_.start_worker()
        wait_for(lambda: httpx.get(f"{sys_.intake_url}/healthz").status_code == 200, 30, "serve")
        scheduler.RECLAIM_AFTER = timedelta(seconds=5)  # time compressed, see the docstring
        ticker = threading.Thread(target=_tick_forever, args=(sys_,), daemon=True)
        ticker.start()
        try:
            yield sys_
        finally:
            sys_.ticking.set()
            sys_.stop_all()
            mail.controller.stop()
            sys_.app.runtime.close()
            with suppress(Exception):
                pg.stop()
            pg.remove()
            with suppress(Exception):
                redis_.kill()


def _tick_forever(sys_: System) -> None:
    while not sys_.ticking.wait(1.0):
        with suppress(Exception):  # the database or the broker may be down on purpose
            tick_once(sys_.app)


# ---------------------------------------------------------------------------- scenarios


@dataclass
class Result:
    name: str
    sent: str
    invariant: str
    observed: dict[str, Any]
    passed: bool


def _customers(sys_: System, n: int, tag: str) -> list[str]:
    """``n`` customers whose renewal fails once and then succeeds; returns their invoices."""
    invoices = []
    zone = _daytime_zone()
    for i in range(n):
        card = CardSpec(outcomes=[INSUFFICIENT_FUNDS, SUCCEED])
        cus = sys_.peer.create_customer(
            email=f"{tag}{i}@example.test", name=f"C {i}", card=card, timezone=zone
        )
        sub = sys_.peer.create_subscription(customer_id=cus, unit_amount=1000 + i)
        invoice, _ = sys_.peer.bill(sub)  # its card declines the first charge
        invoices.append(invoice)
    return invoices


def _daytime_zone() -> str:
    """A zone where it is early afternoon now, so emails are not held for quiet hours."""
    offset = (13 - time.gmtime().tm_hour + 12) % 24 - 12
    return "UTC" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


def _pending_events(sys_: System) -> list[dict[str, Any]]:
    return sys_.peer.take_pending()


def _cases(sys_: System, invoices: list[str]) -> list[DunningCase]:
    from worker.billing.models import Invoice

    with sys_.session() as s:
        return list(
            s.scalars(
                select(DunningCase)
                .join(Invoice, Invoice.id == DunningCase.invoice_id)
                .where(Invoice.provider_id.in_(invoices))
            )
        )


def _double_charges(sys_: System, invoices: list[str]) -> int:
    """Real charge attempts beyond one per idempotency key (a replay of a key is not one),
    and attempts with no key at all, on these invoices' /pay."""
    paths = {f"/v1/invoices/{i}/pay" for i in invoices}
    real = Counter(
        r.idempotency_key
        for r in sys_.peer.requests
        if r.path in paths and not r.replayed and r.status in (200, 402)
    )
    doubled = {key: n for key, n in real.items() if key is None or n > 1}
    for key, n in doubled.items():
        print(f"  {key}: {n} real attempts")
    return sum(n if key is None else n - 1 for key, n in doubled.items())


def scenario_duplicates(sys_: System, p: dict[str, Any]) -> Result:
    invoices = _customers(sys_, p["customers"], "dup")
    events = _pending_events(sys_)
    copies = [e for e in events for _ in range(3)]
    random.Random(7).shuffle(copies)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(sys_.deliver, copies))
    sys_.settle()
    cases = _cases(sys_, invoices)
    with sys_.session() as s:
        stored = s.scalar(
            select(func.count())
            .select_from(InboxEvent)
            .where(InboxEvent.event_id.in_([e["id"] for e in events]))
        )
    observed = {
        "deliveries": len(copies),
        "non_200": sum(code != 200 for code, _ in answers),
        "events": len(events),
        "stored": stored,
        "cases": len(cases),
        "invoices": len(invoices),
    }
    ok = observed["non_200"] == 0 and stored == len(events) and len(cases) == len(invoices)
    return Result(
        "duplicates x3, shuffled",
        f"{len(events)} events x 3, globally shuffled, 8 at a time",
        "every event stored once, one case per invoice, every delivery 200",
        observed,
        ok,
    )


def scenario_kills(sys_: System, p: dict[str, Any]) -> Result:
    invoices = _customers(sys_, p["customers"], "kill")
    for event in _pending_events(sys_):
        sys_.deliver(event)
    sys_.settle()
    cases = _cases(sys_, invoices)
    sys_.peer.reply_delay = 0.4  # every charge's answer takes a while: kills land mid-charge
    with sys_.session() as s:
        for case in cases:
            retry_now(s, case.id, policy=sys_.app.runtime.policy, now=clock.now())
    kills = 0
    rng = random.Random(11)
    while kills < p["kills"]:
        time.sleep(rng.uniform(0.3, 1.5))
        sys_.kill("worker")
        kills += 1
        sys_.start_worker()
    sys_.peer.reply_delay = 0.0
    for event in _pending_events(sys_):
        sys_.deliver(event)
    sys_.settle(timeout=180)
    cases = _cases(sys_, invoices)
    recovered = sum(c.state is DunningState.RECOVERED for c in cases)
    with sys_.session() as s:
        stuck = s.scalar(
            select(func.count())
            .select_from(ScheduledAction)
            .where(
                ScheduledAction.kind == ActionKind.RETRY_PAYMENT,
                ScheduledAction.status == ActionStatus.CLAIMED,
            )
        )
    observed = {
        "kills": kills,
        "double_charges": _double_charges(sys_, invoices),
        "recovered": recovered,
        "cases": len(cases),
        "retries_left_claimed": stuck,
        "emails_sent_twice": sum(n > 1 for n in sys_.mail.keys.values()),
    }
    ok = (
        observed["double_charges"] == 0
        and recovered == len(cases)
        and stuck == 0
        and observed["emails_sent_twice"] == 0
    )
    return Result(
        "worker SIGKILLed during charges",
        f"{len(cases)} retries, the worker killed {kills} times at random moments",
        "0 double charges, 0 double emails, every retry finished, every case recovered",
        observed,
        ok,
    )


def _traffic(
    sys_: System, seconds: float, rate: float, tag: str
) -> list[tuple[int, float, bytes, str]]:
    """Signed ``customer.updated`` webhooks, ``rate`` a second for ``seconds``: (answer,
    seconds it took, body, signature) each."""
    sent = []
    end = time.monotonic() + seconds
    i = 0
    with ThreadPoolExecutor(16) as pool:
        futures = []
        while time.monotonic() < end:
            customer = {"id": f"cus_{tag}{i}", "object": "customer", "email": f"{tag}{i}@x.test"}
            event = {
                "id": f"evt_{tag}_{i}",
                "object": "event",
                "type": "customer.updated",
                "created": int(time.time()),
                "api_version": "2025-03-31.basil",
                "data": {"object": customer},
            }
            body, signature = sys_.peer.signed_payload(event)
            futures.append((pool.submit(sys_.post, body, signature), body, signature))
            i += 1
            time.sleep(1 / rate)
        for future, body, signature in futures:
            code, took = future.result()
            sent.append((code, took, body, signature))
    return sent


def _p(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def scenario_redis_down(sys_: System, p: dict[str, Any]) -> Result:
    outage = p["outage_s"]
    sys_.redis.kill()
    during = _traffic(sys_, outage, 4, "rd")
    sys_.redis.start()
    latencies = [took for _, took, _, _ in during]
    sys_.settle(timeout=240)  # the sweeper hands each event over a minute after intake
    observed = {
        "outage_s": outage,
        "sent": len(during),
        "non_200": sum(code != 200 for code, _, _, _ in during),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(_p(latencies, 0.99) * 1000, 1),
        "lost": _lost(sys_, during),
    }
    ok = observed["non_200"] == 0 and observed["p99_ms"] < 1000 and observed["lost"] == 0
    return Result(
        "Redis killed under traffic",
        f"Redis down {outage} s while 4 webhooks/s arrive",
        "every delivery 200 within a second, every event processed once Redis is back",
        observed,
        ok,
    )


def _lost(sys_: System, sent: list[tuple[int, float, bytes, str]]) -> int:
    ids = [json.loads(body)["id"] for _, _, body, _ in sent]
    with sys_.session() as s:
        done = s.scalar(
            select(func.count())
            .select_from(InboxEvent)
            .where(InboxEvent.event_id.in_(ids), InboxEvent.status != InboxStatus.PENDING)
        )
    return len(ids) - int(done or 0)


def scenario_postgres_down(sys_: System, p: dict[str, Any]) -> Result:
    outage = p["outage_s"]
    sys_.pg.stop()
    during = _traffic(sys_, outage, 4, "pd")
    sys_.pg.start()
    refused = [(b, s) for code, _, b, s in during if code != 200]
    wait_for(lambda: httpx.get(f"{sys_.intake_url}/readyz").status_code == 200, 60, "ready")
    redelivered = [sys_.post(b, s)[0] for b, s in refused]  # Stripe redelivers what got no 200
    sys_.settle(timeout=120)
    latencies = [took for _, took, _, _ in during]
    observed = {
        "outage_s": outage,
        "sent": len(during),
        "answered_503": sum(code == 503 for code, _, _, _ in during),
        "other_5xx_or_none": sum(code not in (200, 503) for code, _, _, _ in during),
        "p99_ms": round(_p(latencies, 0.99) * 1000, 1),
        "redelivered_non_200": sum(code != 200 for code in redelivered),
        "lost": _lost(sys_, during),
    }
    ok = (
        observed["other_5xx_or_none"] == 0
        and observed["p99_ms"] < 1500
        and observed["redelivered_non_200"] == 0
        and observed["lost"] == 0
    )
    return Result(
        "PostgreSQL stopped under traffic",
        f"PostgreSQL stopped {outage} s while 4 webhooks/s arrive; 503s redelivered after",
        "503 within a second while down, nothing else; 0 lost after redelivery",
        observed,
        ok,
    )


def scenario_stripe_storm(sys_: System, p: dict[str, Any]) -> Result:
    invoices = _customers(sys_, p["customers"] // 2, "storm")
    for event in _pending_events(sys_):
        sys_.deliver(event)
    sys_.settle()
    cases = _cases(sys_, invoices)
    n = p["storm"]
    for status in (503, 429, 500):
        sys_.peer.inject_fault(method="POST", path_prefix="/v1/invoices/", status=status, times=n)
    sys_.peer.inject_fault(
        method="POST", path_prefix="/v1/invoices/", status=500, times=2, should_retry=False
    )
    sys_.peer.reply_delay = 3.0  # Stripe charges, and answers after our timeout (2 s)
    with sys_.session() as s:
        for case in cases:
            retry_now(s, case.id, policy=sys_.app.runtime.policy, now=clock.now())
    # Transient failures put retries back for a minute or more; refused ones plan the next.
    time.sleep(15)
    sys_.peer.reply_delay = 0.0
    for event in _pending_events(sys_):
        sys_.deliver(event)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        for event in _pending_events(sys_):
            sys_.deliver(event)
        done = _cases(sys_, invoices)
        if all(c.state in TERMINAL for c in done):
            break
        with sys_.session() as s:
            failed_for_good = s.scalar(
                select(func.count())
                .select_from(ScheduledAction)
                .where(
                    ScheduledAction.case_id.in_([c.id for c in done]),
                    ScheduledAction.status == ActionStatus.FAILED,
                )
            )
        recovered = sum(c.state is DunningState.RECOVERED for c in done)
        if recovered + (failed_for_good or 0) >= len(done):
            break  # the refused ones wait for their next scheduled retry (days away)
        time.sleep(2)
    done = _cases(sys_, invoices)
    with sys_.session() as s:
        failed = s.scalar(
            select(func.count())
            .select_from(ScheduledAction)
            .where(
                ScheduledAction.case_id.in_([c.id for c in done]),
                ScheduledAction.status == ActionStatus.FAILED,
            )
        )
        waiting = sum(c.state not in TERMINAL and _has_due_retry(s, c.id) for c in done)
    paths = {f"/v1/invoices/{i}/pay" for i in invoices}
    observed = {
        "faults": 3 * n + 2,
        "answers_after_timeout_replayed": sum(
            r.replayed and r.status == 200 for r in sys_.peer.requests if r.path in paths
        ),
        "double_charges": _double_charges(sys_, invoices),
        "recovered": sum(c.state is DunningState.RECOVERED for c in done),
        "next_retry_planned": waiting,
        "cases": len(done),
        "actions_failed": failed,
    }
    ok = (
        observed["double_charges"] == 0
        and observed["recovered"] + waiting == len(done)
        and failed == 2
    )
    return Result(
        "Stripe 503/429/500 storm, Should-Retry: false, timeouts after the charge",
        f"{n} x 503, {n} x 429, {n} x 500, 2 x 500 Should-Retry: false on /pay; for 15 s "
        "every answer comes after our 2 s timeout",
        "0 double charges; only the two refused attempts fail, and their cases have the next "
        "retry planned; every other case recovers",
        observed,
        ok,
    )


def _has_due_retry(s: Any, case_id: int) -> bool:
    return (
        s.scalar(
            select(ScheduledAction.id).where(
                ScheduledAction.case_id == case_id,
                ScheduledAction.kind == ActionKind.RETRY_PAYMENT,
                ScheduledAction.status.in_([ActionStatus.PLANNED, ActionStatus.CLAIMED]),
            )
        )
        is not None
    )


def scenario_malformed(sys_: System, p: dict[str, Any]) -> Result:
    rng = random.Random(3)
    good = json.dumps({"id": "evt_m", "type": "invoice.paid", "data": {"object": {}}}).encode()
    kinds: dict[str, Callable[[int], tuple[bytes, str | None]]] = {
        "no signature": lambda i: (good, None),
        "wrong secret": lambda i: (good, _sign(good, "whsec_other")),
        "expired": lambda i: (good, _sign(good, SECRET, time.time() - 3600)),
        "garbage signature": lambda i: (good, "t=1,v1=zz"),
        "broken JSON": lambda i: _signed(b"{" + bytes(rng.randrange(256) for _ in range(40))),
        "not an object": lambda i: _signed(b"[1,2,3]"),
        "missing id": lambda i: _signed(b'{"type": "invoice.paid"}'),
        "mistyped id": lambda i: _signed(b'{"id": 5, "type": "invoice.paid"}'),
        "deep nesting": lambda i: _signed(b"[" * 50_000),
        "huge number": lambda i: _signed(b'{"id": ' + b"9" * 5000 + b', "type": "x"}'),
        "NUL in id": lambda i: _signed(b'{"id": "evt_\\u0000%d", "type": "x"}' % i),
        "lone surrogate": lambda i: _signed(b'{"id": "evt_\\ud800%d", "type": "x"}' % i),
        "odd unicode": lambda i: _signed(
            json.dumps(
                {
                    "id": f"evt_\u202e\u0301{i}",
                    "type": "customer.updated",
                    "data": {
                        "object": {
                            "id": "cus_\u00e9",
                            "object": "customer",
                            "name": "\U0001f600\u200d" * 50,
                        }
                    },
                }
            ).encode()
        ),
        "hostile values": lambda i: _signed(
            json.dumps(
                {
                    "id": f"evt_hv{i}",
                    "type": "invoice.payment_failed",
                    "created": 1,
                    "data": {
                        "object": {
                            "id": f"in_hv{i}",
                            "object": "invoice",
                            "customer": "cus_hv",
                            "status": "open",
                            "amount_due": rng.choice([-5, 0, 2**31, 10**30]),
                            "currency": rng.choice(["usd", "xyz"]),
                        }
                    },
                }
            ).encode()
        ),
        "too large": lambda i: _signed(
            b'{"id": "evt_big", "pad": "' + b"x" * (1024 * 1024) + b'"}'
        ),
    }
    names = list(kinds)
    sent = [names[i % len(names)] for i in range(p["malformed"])]
    with ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(
                lambda pair: (pair[1], sys_.post(*kinds[pair[1]](pair[0]))[0]), enumerate(sent)
            )
        )
    by_kind: dict[str, Counter[int]] = {}
    for kind, code in answers:
        by_kind.setdefault(kind, Counter())[code] += 1
    sys_.settle(timeout=120)
    with sys_.session() as s:
        rejected = s.scalar(select(func.count()).select_from(RejectedDelivery))
        stuck = s.scalar(
            select(func.count())
            .select_from(InboxEvent)
            .where(InboxEvent.status == InboxStatus.PENDING, InboxEvent.event_id.like("evt_hv%"))
        )
    server_errors = sum(code >= 500 or code == 0 for _, code in answers)
    observed = {
        "requests": len(sent),
        "kinds": len(names),
        "5xx_or_no_answer": server_errors,
        "rejected_kept": rejected,
        "hostile_events_left_pending": stuck,
        "answers": {k: dict(v) for k, v in by_kind.items()},
    }
    ok = server_errors == 0 and stuck == 0 and rejected and rejected > 0
    return Result(
        "malformed and hostile requests",
        f"{len(sent)} requests in {len(names)} kinds",
        "no 5xx; signed bad bodies 400 and kept; hostile events failed, never pending",
        observed,
        bool(ok),
    )


def _sign(body: bytes, secret: str, at: float | None = None) -> str:
    import hashlib
    import hmac

    t = int(at if at is not None else time.time())
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def _signed(body: bytes) -> tuple[bytes, str]:
    return body, _sign(body, SECRET)


def scenario_smtp(sys_: System, p: dict[str, Any]) -> Result:
    sys_.mail.down()
    invoices = _customers(sys_, p["customers"] // 2, "mail")
    for event in _pending_events(sys_):
        sys_.deliver(event)
    time.sleep(p["outage_s"])  # the first emails come due and fail: the server is down
    sys_.mail.busy = p["customers"] // 4
    sys_.mail.up()
    cases = _cases(sys_, invoices)
    expected = {f"case:{c.id}:email:first" for c in cases}

    def all_sent() -> bool:
        return expected <= set(sys_.mail.keys)

    with suppress(TimeoutError):
        wait_for(all_sent, 400, "every first email")
    observed = {
        "emails_due": len(expected),
        "delivered": len(expected & set(sys_.mail.keys)),
        "delivered_twice": sum(sys_.mail.keys[k] > 1 for k in expected),
        "451s_given": p["customers"] // 4 - sys_.mail.busy,
    }
    ok = observed["delivered"] == len(expected) and observed["delivered_twice"] == 0
    return Result(
        "SMTP down, then 451, then accepting",
        f"server down {p['outage_s']} s while {len(expected)} emails come due, then 451 for "
        f"{p['customers'] // 4} recipients",
        "every email delivered exactly once after recovery",
        observed,
        ok,
    )


def scenario_two_of_everything(sys_: System, p: dict[str, Any]) -> Result:
    """Two workers and two schedulers for a while, with retries and emails due."""
    sys_.start_worker("worker2")
    for beat in ("beat1", "beat2"):  # real beats too (they tick every 10 s)
        sys_.spawn(beat, "beat", "--loglevel=WARNING", f"--schedule={sys_.root / beat}")
    second = threading.Event()
    ticker = threading.Thread(target=_tick_until, args=(sys_, second), daemon=True)
    ticker.start()
    invoices = _customers(sys_, p["customers"], "two")
    for event in _pending_events(sys_):
        sys_.deliver(event)
    sys_.settle()
    with sys_.session() as s:
        for case in _cases(sys_, invoices):
            retry_now(s, case.id, policy=sys_.app.runtime.policy, now=clock.now())
    time.sleep(p["two_s"])
    for event in _pending_events(sys_):
        sys_.deliver(event)
    sys_.settle(timeout=120)
    second.set()
    for name in ("worker2", "beat1", "beat2"):
        sys_.kill(name)
    cases = _cases(sys_, invoices)
    observed = {
        "seconds_with_two": p["two_s"],
        "double_charges": _double_charges(sys_, invoices),
        "emails_sent_twice": sum(n > 1 for n in sys_.mail.keys.values()),
        "recovered": sum(c.state is DunningState.RECOVERED for c in cases),
        "cases": len(cases),
    }
    ok = (
        observed["double_charges"] == 0
        and observed["emails_sent_twice"] == 0
        and observed["recovered"] == len(cases)
    )
    return Result(
        "two workers and two schedulers",
        f"{len(cases)} retries and their emails with two workers, two `dunning beat` and two "
        "ticking schedulers running",
        "0 double charges, 0 double emails, every case recovered",
        observed,
        ok,
    )


def _tick_until(sys_: System, stop: threading.Event) -> None:
    while not stop.wait(0.7):
        with suppress(Exception):
            tick_once(sys_.app)


def final_invariants(sys_: System) -> Result:
    """Over everything the scenarios did."""
    from worker.ledger.models import LedgerMovement, MovementKind

    with sys_.session() as s:
        endings = s.execute(
            select(LedgerMovement.case_id, LedgerMovement.kind).where(
                LedgerMovement.kind.in_([MovementKind.RECOVERY, MovementKind.CHURN_INVOLUNTARY])
            )
        ).all()
        pending = s.scalar(
            select(func.count())
            .select_from(InboxEvent)
            .where(InboxEvent.status == InboxStatus.PENDING)
        )
        cases = s.scalar(select(func.count()).select_from(DunningCase))
    kinds: dict[int | None, set[Any]] = {}
    for case_id, kind in endings:
        kinds.setdefault(case_id, set()).add(kind)
    both = sum(len(k) > 1 for k in kinds.values())
    observed = {
        "cases": cases,
        "recovered_and_churned": both,
        "events_still_pending": pending,
        "emails_sent_twice": sum(n > 1 for n in sys_.mail.keys.values()),
    }
    ok = both == 0 and pending == 0 and observed["emails_sent_twice"] == 0
    return Result(
        "across all scenarios",
        "-",
        "no case both recovered and churned, no event left pending, no email sent twice",
        observed,
        ok,
    )


SCENARIOS: dict[str, Callable[[System, dict[str, Any]], Result]] = {
    "duplicates": scenario_duplicates,
    "kills": scenario_kills,
    "stripe": scenario_stripe_storm,
    "malformed": scenario_malformed,
    "postgres": scenario_postgres_down,
    "redis": scenario_redis_down,
    "smtp": scenario_smtp,
    "two": scenario_two_of_everything,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short")
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    results: list[Result] = []
    root = Path(tempfile.mkdtemp(prefix="dunning-chaos-"))
    try:
        with system(root) as sys_:
            for name in args.only or profile.get("scenarios") or list(SCENARIOS):
                started = time.monotonic()
                try:
                    result = SCENARIOS[name](sys_, profile)
                except Exception as exc:  # a scenario that cannot finish fails, visibly
                    result = Result(
                        name, "-", "-", {"error": f"{type(exc).__name__}: {exc}"}, False
                    )
                result.observed["seconds"] = round(time.monotonic() - started, 1)
                results.append(result)
                _print(result)
            results.append(final_invariants(sys_))
            _print(results[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2, default=str))
    failed = [r.name for r in results if not r.passed]
    print(f"\n{len(results) - len(failed)}/{len(results)} scenarios passed")
    return 1 if failed else 0


def _print(result: Result) -> None:
    print(f"\n[{'PASS' if result.passed else 'FAIL'}] {result.name}")
    print(f"  sent:      {result.sent}")
    print(f"  invariant: {result.invariant}")
    print(f"  observed:  {json.dumps(result.observed, default=str)}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
