"""Scale-out: workers and beats on separate hosts, one PostgreSQL and one broker.

Each "host" is a Linux network namespace with its own address on a bridge (10.213.N.0/24);
PostgreSQL, Redis and an SMTP server run beside this script on the bridge's own address, as a
database and a broker would on a network. Every host runs a real `dunning worker` (one
process, concurrency 1) and a real `dunning beat` (two beats tick side by side, as two hosts'
would), each with its own data directory.

A backlog of failed-payment events is stored in the inbox and handed to the broker, as the
intake does, in two rounds: first with one host's worker running, then with both. Each case's
first email is due at once (the policy here has no quiet hours), so the beats' ticks claim
them and the workers send them while both rounds drain.

It prints the rate of each round, their ratio (the speed-up from the second host), and checks
that nothing happened twice: every event processed once, one case and one failure transition
per invoice, one first email per case at the SMTP server, and both hosts did work.

    sudo .venv/bin/python bench/scaleout.py [--profile short|full] [--json]

Needs root (``ip netns``), PostgreSQL's server binaries, redis-server and iproute2. On a
2-core machine the database and the broker share the cores with both workers, so the
speed-up is bounded well below 2; the figure is what this machine gives.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from chaos import Mail, Postgres, Redis, wait_for  # noqa: E402

from tests.support import stripe_events as ev  # noqa: E402
from worker import clock  # noqa: E402
from worker.app import DunningCelery, create_app  # noqa: E402
from worker.dunning.models import (  # noqa: E402
    ActionKind,
    ActionStatus,
    CaseTransition,
    DunningCase,
    ScheduledAction,
)
from worker.dunning.state import DunningEvent  # noqa: E402
from worker.enqueue import send_safely  # noqa: E402
from worker.migrate import upgrade  # noqa: E402
from worker.settings import Settings  # noqa: E402
from worker.webhooks.inbox import store_event  # noqa: E402
from worker.webhooks.models import InboxEvent, InboxStatus  # noqa: E402

PROFILES = {"short": {"events": 600}, "full": {"events": 10_000}}
HOSTS = 2


class NeedsRootError(RuntimeError):
    pass


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Hosts:
    """A bridge on this machine and one network namespace per host, each with a veth pair
    into the bridge. Names carry this process's id, so runs side by side do not collide."""

    count: int
    tag: str = field(default_factory=lambda: str(os.getpid() % 100_000))

    @property
    def subnet(self) -> str:
        return f"10.213.{int(self.tag) % 250}"

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    def ns(self, i: int) -> str:
        return f"dun{self.tag}h{i}"

    def address(self, i: int) -> str:
        return f"{self.subnet}.{10 + i}"

    def up(self) -> None:
        bridge = f"dunb{self.tag}"
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i in range(1, self.count + 1):
            ns, outside, inside = self.ns(i), f"dun{self.tag}o{i}", f"dun{self.tag}i{i}"
            _ip("netns", "add", ns)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", outside, "master", bridge)
            _ip("link", "set", outside, "up")
            _ip("link", "set", inside, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", inside)
            _ip("-n", ns, "link", "set", inside, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def down(self) -> None:
        for i in range(1, self.count + 1):
            with suppress(subprocess.CalledProcessError):
                _ip("netns", "del", self.ns(i))  # its end of the veth pair goes with it
        with suppress(subprocess.CalledProcessError):
            _ip("link", "del", f"dunb{self.tag}")

    def run_on(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.ns(i)]


@dataclass
class Cluster:
    root: Path
    hosts: Hosts
    pg: Postgres
    redis: Redis
    mail: Mail
    app: DunningCelery  # this script's view: the database (loopback) and the broker
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def env(self, host: int) -> dict[str, str]:
        """What a process on ``host`` reads: the services at the bridge's address."""
        policy = self.root / "policy.toml"
        if not policy.exists():
            text = (REPO / "config" / "dunning.toml").read_text(encoding="utf-8")
            quiet = re.sub(r"quiet_hours = \{[^}]*\}", "quiet_hours = { start = 0, end = 0 }", text)
            if quiet == text:
                raise RuntimeError("config/dunning.toml: no quiet_hours line to open up")
            policy.write_text(quiet, encoding="utf-8")
        gateway = self.hosts.gateway
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("DUNNING_", "STRIPE_"))}
        return {
            **keep,
            "DUNNING_DATABASE_URL": self.pg.url.replace("127.0.0.1", gateway),
            "DUNNING_BROKER_URL": self.redis.url.replace("127.0.0.1", gateway),
            "DUNNING_CONFIG": str(policy),
            "DUNNING_SMTP_URL": f"smtp://{gateway}:{self.mail.port}",
            "DUNNING_DATA_DIR": str(self.root / f"host{host}"),
        }

    def spawn(self, name: str, host: int, *args: str) -> None:
        log = (self.root / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [*self.hosts.run_on(host), sys.executable, "-m", "worker", *args],
            env=self.env(host),
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def start_worker(self, host: int) -> None:
        name = f"worker@host{host}"
        self.spawn(f"worker{host}", host, "worker", "--concurrency=1", f"--hostname={name}")
        wait_for(lambda: self._answers(name), 60, f"{name} to answer a ping")

    def _answers(self, name: str) -> bool:
        replies = self.app.control.ping(destination=[name], timeout=1.0) or []
        return any(name in reply for reply in replies)

    def tasks_by_host(self) -> dict[str, int]:
        """``webhooks.process_event`` tasks each host's worker has run (its own count)."""
        stats = self.app.control.inspect(timeout=2.0).stats() or {}
        return {
            name.split("@", 1)[1]: info.get("total", {}).get("webhooks.process_event", 0)
            for name, info in stats.items()
        }

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()


@contextmanager
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise NeedsRootError("needs root and iproute2 (ip netns) to make the hosts")
    root = Path(tempfile.mkdtemp(prefix="dunning-scaleout-"))
    hosts = Hosts(HOSTS)
    hosts.up()
    pg = redis = mail = None
    try:
        pg = Postgres(root, also_on=hosts.gateway)
        redis = Redis(also_on=hosts.gateway)
        mail = Mail(host=hosts.gateway)
        upgrade(pg.url)
        settings = Settings(database_url=pg.url, broker_url=redis.url, data_dir=root / "here")
        it = Cluster(root, hosts, pg, redis, mail, create_app(settings))
        try:
            yield it
        finally:
            it.stop_all()
            it.app.runtime.close()
    finally:
        if mail is not None:
            mail.controller.stop()
        if redis is not None:
            redis.kill()
        if pg is not None:
            with suppress(Exception):
                pg.stop()
            pg.remove()
        hosts.down()
        shutil.rmtree(root, ignore_errors=True)


def _backlog(it: Cluster, first: int, count: int) -> None:
    """``count`` failed payments of distinct customers, stored and handed to the broker as
    the intake does (the invoice carries its PaymentIntent: no Stripe call is needed)."""
    now = clock.now()
    ids: list[int] = []
    with it.app.runtime.session() as session:
        for n in range(first, first + count):
            pi = ev.payment_intent(
                pi_id=f"pi_so{n}", charge_id=f"ch_so{n}", decline_code="insufficient_funds"
            )
            invoice = ev.invoice(
                invoice_id=f"in_so{n}",
                customer_id=f"cus_so{n}",
                subscription_id=f"sub_so{n}",
                shape="acacia",
                payment_intent=pi,
                at=now,
            )
            invoice["customer_email"] = f"customer{n}@example.com"
            event = ev.envelope(
                "invoice.payment_failed", invoice, at=now, event_id=f"evt_so{n}", shape="acacia"
            )
            stored = store_event(
                session, provider="stripe", body=json.dumps(event).encode(), now=now
            )
            if stored.inbox_id is not None:  # None: stored by an earlier run of this round
                ids.append(stored.inbox_id)
    for inbox_id in ids:
        send_safely(it.app, "webhooks.process_event", inbox_id=inbox_id)()


def _processed(it: Cluster) -> int:
    with it.app.runtime.session() as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(InboxEvent)
                .where(InboxEvent.status == InboxStatus.PROCESSED)
            )
            or 0
        )


def _round(it: Cluster, first: int, count: int, timeout: float) -> float:
    """Store and hand out ``count`` events; the rate they were processed at, events/s."""
    before = _processed(it)
    _backlog(it, first, count)
    started = time.monotonic()
    wait_for(lambda: _processed(it) >= before + count, timeout, f"{count} events processed")
    return count / (time.monotonic() - started)


def run(profile: str) -> dict[str, Any]:
    events = PROFILES[profile]["events"]
    half = events // 2
    timeout = max(120.0, events / 5)
    with cluster() as it:
        for host in range(1, HOSTS + 1):
            it.spawn(f"beat{host}", host, "beat")
        it.start_worker(1)
        one = _round(it, 0, half, timeout)
        it.start_worker(2)
        two = _round(it, half, events - half, timeout)

        def first_emails_done() -> bool:
            with it.app.runtime.session() as session:
                return (
                    session.scalar(
                        select(func.count())
                        .select_from(ScheduledAction)
                        .where(
                            ScheduledAction.kind == ActionKind.SEND_EMAIL,
                            ScheduledAction.idempotency_key.like("%:email:first"),
                            ScheduledAction.status == ActionStatus.DONE,
                        )
                    )
                    == events
                )

        # The beats tick every 30 s: the last first emails go out within a tick or two.
        wait_for(first_emails_done, timeout + 90, "every first email sent")
        result = _check(it, events)
        result.update(
            profile=profile,
            events=events,
            one_host_events_per_s=round(one, 1),
            two_hosts_events_per_s=round(two, 1),
            speed_up=round(two / one, 2),
        )
        return result


def _check(it: Cluster, events: int) -> dict[str, Any]:
    with it.app.runtime.session() as session:
        processed = _processed(it)
        cases = session.scalar(select(func.count()).select_from(DunningCase)) or 0
        failures = dict(
            session.execute(
                select(CaseTransition.case_id, func.count())
                .where(CaseTransition.event == DunningEvent.PAYMENT_FAILED)
                .group_by(CaseTransition.case_id)
            ).all()
        )
    first_keys = {k: n for k, n in it.mail.keys.items() if k.endswith(":email:first")}
    received = it.tasks_by_host()
    checks = {
        "every event processed once": processed == events,
        "one case per invoice": cases == events,
        "one failure transition per case": len(failures) == events
        and set(failures.values()) == {1},
        "one first email per case": len(first_keys) == events and set(first_keys.values()) == {1},
        "both hosts processed events": len(received) == HOSTS
        and all(n > 0 for n in received.values()),
    }
    return {"checks": checks, "tasks_by_host": received, "passed": all(checks.values())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    try:
        result = run(args.profile)
    except NeedsRootError as exc:
        print(f"scaleout: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"profile {result['profile']}: {result['events']} failed-payment events")
        print(f"  one host : {result['one_host_events_per_s']:8.1f} events/s")
        print(f"  two hosts: {result['two_hosts_events_per_s']:8.1f} events/s")
        print(f"  speed-up : {result['speed_up']:8.2f}x")
        print(f"  tasks by host: {result['tasks_by_host']}")
        for name, ok in result["checks"].items():
            print(f"  {'PASS' if ok else 'FAIL'} {name}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
