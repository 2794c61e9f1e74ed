"""Queues per kind: ``dunning worker -Q payments`` takes payments and nothing else, so each
kind of work scales with its own workers; an unknown queue name is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from fnmatch import fnmatch
from pathlib import Path

import redis

from tests.support.paths import REPO
from tests.support.processes import dunning, stop
from tests.support.stack import wait_for
from worker.app import QUEUES, ROUTES, create_app
from worker.settings import Settings

# One message for each queue; the ids match no row, so whoever runs them does nothing.
ONE_OF_EACH = {
    "webhooks.process_event": {"inbox_id": 999_999},
    "dunning.retry_payment": {"action_ids": [999_999]},
    "dunning.send_email": {"action_ids": [999_998]},
    "dunning.tick": {},
}


def _queue(name: str) -> str:
    (queue,) = {r["queue"] for pattern, r in ROUTES.items() if fnmatch(name, pattern)}
    return queue


def test_every_task_has_a_queue_of_its_kind(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    ours = [name for name in app.tasks if not name.startswith("celery.")]
    assert {_queue(name) for name in ours} == set(QUEUES)
    assert {_queue(name) for name in ONE_OF_EACH} == set(QUEUES)
    assert _queue("dunning.final_action") == "payments"
    assert _queue("dunning.tick") == "scheduler"


def test_a_worker_started_for_payments_takes_only_payments(
    pg: str, redis_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "DUNNING_DATABASE_URL": pg,
        "DUNNING_BROKER_URL": redis_url,
        "DUNNING_CONFIG": str(REPO / "config" / "dunning.toml"),
    }
    sender = create_app(Settings(database_url=pg, broker_url=redis_url, data_dir=tmp_path))
    for name, kwargs in ONE_OF_EACH.items():  # payments last: the others wait the longest
        if name != "dunning.retry_payment":
            sender.send_task(name, kwargs=kwargs)
    sender.send_task("dunning.retry_payment", kwargs=ONE_OF_EACH["dunning.retry_payment"])
    broker = redis.Redis.from_url(redis_url)
    assert {q: broker.llen(q) for q in QUEUES} == dict.fromkeys(QUEUES, 1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "worker", "-Q", "payments", "--pool=solo"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: broker.llen("payments") == 0, timeout=60, what="the payment taken")
        wait_for(lambda: not broker.hlen("unacked"), what="the payment done")
        time.sleep(2)  # time enough to take any other message it listened for
        assert {q: broker.llen(q) for q in QUEUES} == {
            "intake": 1,
            "payments": 0,
            "emails": 1,
            "scheduler": 1,
        }
    finally:
        stop([proc], timeout=20)
    sender.runtime.close()


def test_an_unknown_queue_is_refused(tmp_path: Path) -> None:
    done = dunning({**os.environ}, tmp_path, "worker", "-Q", "payments,payment")
    assert done.returncode == 2
    assert "payment: not a queue; choose from intake, payments, emails, scheduler" in done.stderr
