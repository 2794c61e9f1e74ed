"""The production process layout: ``dunning serve`` + ``dunning worker`` + ``dunning beat`` as
separate processes on PostgreSQL, with Redis and with RabbitMQ as the broker, driven only
through HTTP and the CLI.

Slow by nature (the beat ticks every 10 s), so it checks the whole contract in one run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from tests.support.paths import REPO
from tests.support.processes import dunning, free_port, stop
from tests.support.rabbitmq import rabbitmq_vhost
from tests.support.smtp import Recorder
from tests.support.stack import API_KEY, WEBHOOK_SECRET, wait_for
from worker.db import make_engine
from worker.dunning.models import DunningCase
from worker.sim.stripe_peer import INSUFFICIENT_FUNDS, SUCCEED, CardSpec, StripePeer


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest, redis_url: str) -> Iterator[str]:
    """Redis, and RabbitMQ (a vhost of its own, so no other run's messages are in it)."""
    if request.param == "redis":
        yield redis_url
        return
    with rabbitmq_vhost() as url:
        yield url


@pytest.fixture
def env(
    pg: str, broker_url: str, mail: tuple[Recorder, int], peer: tuple[StripePeer, str]
) -> dict[str, str]:
    return {
        **os.environ,
        "DUNNING_DATABASE_URL": pg,
        "DUNNING_BROKER_URL": broker_url,
        "DUNNING_CONFIG": str(REPO / "config" / "dunning.toml"),
        "DUNNING_SMTP_URL": f"smtp://127.0.0.1:{mail[1]}",
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": peer[1],
    }


@pytest.fixture
def processes(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    commands = [["serve", "--port", str(port)], ["worker", "--pool=solo"], ["beat"]]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "worker", *cmd],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for cmd in commands
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), timeout=30, what="dunning serve /readyz")
        yield url
    finally:
        stop(procs, timeout=20)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_worker_beat(
    env: dict[str, str],
    tmp_path: Path,
    processes: str,
    peer: tuple[StripePeer, str],
    mail: tuple[Recorder, int],
    pg: str,
) -> None:
    assert dunning(env, tmp_path, "db", "upgrade").returncode == 0
    stripe_peer = peer[0]
    stripe_peer.webhook_url = f"{processes}/webhooks/stripe"
    customer = stripe_peer.create_customer(
        email="ops@example.com", name="Olu", card=CardSpec(outcomes=[INSUFFICIENT_FUNDS, SUCCEED])
    )
    invoice_id, _ = stripe_peer.bill(
        stripe_peer.create_subscription(customer_id=customer, unit_amount=9900)
    )
    stripe_peer.deliver_pending()
    engine = make_engine(pg)
    try:
        _recover(env, tmp_path, stripe_peer, mail[0], engine, invoice_id)
    finally:
        engine.dispose()


def _recover(
    env: dict[str, str],
    tmp_path: Path,
    stripe_peer: StripePeer,
    mail: Recorder,
    engine: Engine,
    invoice_id: str,
) -> None:
    def case_ids() -> list[int]:
        with engine.connect() as conn:
            return list(conn.scalars(select(DunningCase.id)))

    (case_id,) = wait_for(case_ids, what="a case from the signed webhook")
    failed = next(e["id"] for e in stripe_peer.events if e["type"] == "invoice.payment_failed")
    assert stripe_peer.redeliver(failed) == 200
    listed = json.loads(dunning(env, tmp_path, "cases", "list", "--json").stdout)
    assert [(c["invoice_id"], c["state"], c["amount_due"], c["decline_code"]) for c in listed] == [
        (invoice_id, "retrying", 9900, "insufficient_funds")
    ]
    assert {"id", "customer_id", "currency", "attempts", "next_action_at"} <= set(listed[0])

    planned = dunning(env, tmp_path, "cases", "retry-now", str(case_id))
    assert planned.returncode == 0, planned.stderr

    def state() -> str:
        shown = dunning(env, tmp_path, "cases", "show", str(case_id), "--json")
        return str(json.loads(shown.stdout)["state"])

    wait_for(lambda: state() == "recovered", timeout=90, what="beat + worker to recover it")
    stripe_peer.deliver_pending()
    wait_for(
        lambda: [m for m in mail.messages if m["X-Dunning-Key"].endswith("email:recovered")],
        timeout=90,
        what="the recovered email",
    )
    shown = json.loads(dunning(env, tmp_path, "cases", "show", str(case_id), "--json").stdout)
    assert shown["recovered_method"] == "retry"
    assert [t["to"] for t in shown["transitions"]][-1] == "recovered"
    recovered = [m for m in mail.messages if m["X-Dunning-Key"].endswith("email:recovered")]
    assert len(recovered) == 1
    assert stripe_peer.charge_attempts(invoice_id) == 2
