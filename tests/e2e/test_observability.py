"""What a platform team watches, on real traffic: signed webhooks into the intake, a Celery
worker processing them against the Stripe-compatible peer (which rate-limits once), an email
through aiosmtpd; then the counters on ``/metrics``, the Grafana dashboard checked against
what is really exposed, and the real processes with JSON logs and the worker's own /metrics.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

from tests.support import dashboard
from tests.support import stripe_events as ev
from tests.support.metrics import Scrape, scrape
from tests.support.paths import REPO, START
from tests.support.processes import clean_env, dunning, free_port, stop
from tests.support.smtp import Recorder
from tests.support.stack import API_KEY, WEBHOOK_SECRET, Stack, wait_for
from worker import clock
from worker.dunning.state import DunningState
from worker.sim.stripe_peer import INSUFFICIENT_FUNDS, SUCCEED, CardSpec, StripePeer

LINK_SECRET = "obs-link-key-" + "k" * 32
SMTP_PASSWORD = "smtp-pass-" + "p" * 12
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def _signed_post(url: str, payload: dict[str, object]) -> int:
    body = json.dumps(payload).encode()
    t = int(time.time())
    mac = hmac.new(WEBHOOK_SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    headers = {"Stripe-Signature": f"t={t},v1={mac}", "Content-Type": "application/json"}
    return httpx.post(f"{url}/webhooks/stripe", content=body, headers=headers).status_code


def test_metrics_move_with_real_traffic_and_the_dashboard_names_only_them(
    stack: Stack, manual_clock: clock.ManualClock
) -> None:
    peer, url = stack.peer, stack.intake_url
    before = scrape(url)

    def moved(now: Scrape, name: str, **labels: str) -> float:
        return now.value(name, **labels) - before.value(name, **labels)

    customer = peer.create_customer(
        email="jane.doe@example.com",
        name="Jane Doe",
        card=CardSpec(outcomes=[INSUFFICIENT_FUNDS, SUCCEED]),
    )
    invoice_id, paid = peer.bill(peer.create_subscription(customer_id=customer, unit_amount=4900))
    assert not paid
    # Stripe rate-limits the worker's first look-up: retried after a back-off, and counted.
    peer.inject_fault(method="GET", path_prefix="/v1/", status=429)
    delivered = peer.deliver_pending()
    wait_for(
        lambda: [c for c in stack.cases() if c.state is DunningState.RETRYING],
        what="a retrying case",
    )
    # A signed event with nothing to collect: finished as failed, with the reason.
    nothing_due = ev.invoice(invoice_id="in_nothing_due", amount_due=0, at=START)
    assert _signed_post(url, ev.envelope("invoice.payment_failed", nothing_due, at=START)) == 200
    stack.tick()  # the first dunning email goes out
    wait_for(lambda: stack.mail_with("email:first"), what="the payment_failed email")

    processed = "dunning_events_processed_total"
    after = wait_for(
        lambda: (
            now
            if moved(now := scrape(url), processed, outcome="failed") == 1
            and moved(now, "dunning_emails_total", outcome="sent") == 1
            else None
        ),
        what="the worker's counts",
    )
    assert [r.status for r in peer.requests].count(429) == 1
    assert moved(after, "dunning_stripe_requests_total", outcome="rate_limited") == 1
    assert moved(after, "dunning_stripe_requests_total", outcome="ok") >= 2
    assert moved(after, processed, type="invoice.payment_failed", outcome="processed") == 1
    assert moved(after, processed, type="invoice.payment_failed", outcome="failed") == 1
    assert moved(after, processed) == delivered + 1
    requests = "dunning_intake_requests_total"
    assert moved(after, requests, route="/webhooks/stripe", status="200") == delivered + 1
    tasks = "dunning_task_duration_seconds_count"
    assert moved(after, tasks, task="webhooks.process_event") == delivered + 1
    assert moved(after, tasks, task="dunning.send_email") >= 1
    waited = "dunning_task_queue_seconds_count"
    assert moved(after, waited, task="webhooks.process_event") == delivered + 1
    assert moved(after, "dunning_tasks_total", task="dunning.send_email", state="success") >= 1
    assert after.value("dunning_actions_due", kind="retry_payment") == 0  # planned for later
    assert invoice_id not in after.text and customer not in after.text  # ids are no labels

    assert dashboard.drift(dashboard.load(), after) == []


def test_processes_log_json_and_the_worker_serves_its_metrics(
    pg: str,
    redis_url: str,
    peer: tuple[StripePeer, str],
    mail: tuple[Recorder, int],
    tmp_path: Path,
) -> None:
    """``dunning serve`` and a prefork ``dunning worker`` (one pool process) with JSON logs,
    -v: every line on stderr is a JSON object, with no email address and no secret; the
    worker's /metrics sums its pool process's counts from files under the data directory."""
    stripe_peer, api_base = peer
    work = tmp_path / "work"
    work.mkdir()
    intake_port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "DUNNING_DATABASE_URL": pg,
        "DUNNING_BROKER_URL": redis_url,
        "DUNNING_CONFIG": str(REPO / "config" / "dunning.toml"),
        "DUNNING_SMTP_URL": f"smtp://mailer:{SMTP_PASSWORD}@127.0.0.1:{mail[1]}",
        "DUNNING_LINK_KEYS": f"obs:{LINK_SECRET}",
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": api_base,
        "DUNNING_LOG_FORMAT": "json",
        "DUNNING_METRICS_PORT": str(metrics_port),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    migrated = dunning(env, work, "-v", "db", "upgrade")
    assert migrated.returncode == 0, migrated.stderr
    logs = {name: (tmp_path / f"{name}.log").open("w+") for name in ("serve", "worker")}
    procs = [
        _start(env, work, logs["serve"], "-v", "serve", "--port", str(intake_port)),
        _start(env, work, logs["worker"], "-v", "worker", "--concurrency=1"),
    ]
    intake, worker_metrics = f"http://127.0.0.1:{intake_port}", f"http://127.0.0.1:{metrics_port}"
    try:
        wait_for(lambda: _answers(f"{intake}/readyz"), timeout=30, what="dunning serve")
        wait_for(lambda: _answers(f"{worker_metrics}/metrics"), timeout=30, what="worker metrics")
        stripe_peer.webhook_url = f"{intake}/webhooks/stripe"
        customer = stripe_peer.create_customer(
            email="olu.private@example.com", name="Olu", card=CardSpec(outcomes=[SUCCEED])
        )
        stripe_peer.bill(stripe_peer.create_subscription(customer_id=customer, unit_amount=990))
        stripe_peer.inject_fault(method="GET", path_prefix="/v1/", status=429)
        customer = stripe_peer.create_customer(
            email="jane.private@example.com",
            name="Jane",
            card=CardSpec(outcomes=[INSUFFICIENT_FUNDS]),
        )
        stripe_peer.bill(stripe_peer.create_subscription(customer_id=customer, unit_amount=4900))
        delivered = stripe_peer.deliver_pending()
        counted = wait_for(
            lambda: (
                now
                if (now := scrape(worker_metrics)).value("dunning_events_processed_total")
                == delivered
                else None
            ),
            timeout=60,
            what="the pool process's counts on the worker's /metrics",
        )
        served = scrape(intake)
    finally:
        stop(procs, timeout=30)

    processed = "dunning_events_processed_total"
    assert counted.value(processed, type="invoice.payment_failed", outcome="processed") == 1
    assert counted.value("dunning_task_duration_seconds_count") == delivered
    # stamped when the intake process sent it, observed when the pool process started it
    assert counted.value("dunning_task_queue_seconds_count") == delivered
    assert counted.value("dunning_stripe_requests_total", outcome="rate_limited") == 1
    requests = "dunning_intake_requests_total"
    assert served.value(requests, route="/webhooks/stripe", status="200") == delivered
    # The pool process counted into files under the data directory, and nowhere else.
    folder = work / ".dunning" / "metrics" / f"worker-{metrics_port}"
    assert sorted(p.name.split("_")[0] for p in folder.glob("*.db")) == ["counter", "histogram"]
    assert sorted(p.name for p in work.iterdir()) == [".dunning"]

    lines = {name: _read(log) for name, log in logs.items()}
    lines["db upgrade"] = migrated.stderr.splitlines()
    for name, logged in lines.items():
        assert logged, name
        records = [json.loads(line) for line in logged]  # every line is one JSON object
        for record in records:
            assert {"time", "level", "logger", "message"} <= set(record), (name, record)
        text = "\n".join(logged)
        addresses = [a for a in _EMAIL.findall(text) if not a.startswith("celery@")]  # a node
        assert addresses == [], (name, addresses)
        assert "private" not in text, name
        for secret in (API_KEY, WEBHOOK_SECRET, LINK_SECRET, SMTP_PASSWORD):
            assert secret not in text, (name, secret)
    worker_records = [json.loads(line) for line in lines["worker"]]
    assert any(r["level"] == "DEBUG" for r in worker_records)  # -v: the most there is to leak
    in_tasks = [r for r in worker_records if r.get("task") == "webhooks.process_event"]
    assert in_tasks and all(r["task_id"] for r in in_tasks)  # a task's lines name it


def _start(env: dict[str, str], cwd: Path, log: IO[str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "worker", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,  # Celery's shutdown notice; the log is stderr
        stderr=log,
    )


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _read(log: IO[str]) -> list[str]:
    log.flush()
    log.seek(0)
    return [line for line in log.read().splitlines() if line.strip()]


def test_a_metrics_port_in_use_stops_the_worker_in_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = clean_env(DUNNING_METRICS_PORT=str(port))
        result = dunning(env, tmp_path, "worker")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: DUNNING_METRICS_PORT: cannot listen on 127.0.0.1:{port}: ")
