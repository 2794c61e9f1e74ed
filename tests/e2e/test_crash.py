"""A worker process killed mid-task loses nothing and doubles nothing.

The worker runs as a real ``dunning worker`` process. It is killed (SIGKILL) after Stripe has
charged the card but before the answer arrives, so our records do not know the outcome. The
scheduler hands the claimed action out again; the new worker repeats the call with the same
idempotency key, Stripe replays the saved answer, and the card is charged once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from tests.support.stack import API_KEY, WEBHOOK_SECRET, Stack, wait_for
from worker import clock
from worker.dunning.operations import retry_now
from worker.dunning.scheduler import RECLAIM_AFTER
from worker.dunning.state import DunningState
from worker.sim.stripe_peer import INSUFFICIENT_FUNDS, SUCCEED, CardSpec


@contextmanager
def worker_process(stack: Stack, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    settings = stack.settings
    assert settings.smtp_url is not None
    env = {
        **os.environ,
        "DUNNING_DATABASE_URL": settings.database_url,
        "DUNNING_BROKER_URL": settings.broker_url,
        "DUNNING_CONFIG": str(settings.config_path),
        "DUNNING_SMTP_URL": settings.smtp_url.reveal(),
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": settings.stripe_api_base or "",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "worker", "--pool=solo", "--loglevel=WARNING"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_killed_mid_charge_charges_once(stack_no_worker: Stack, tmp_path: Path) -> None:
    stack = stack_no_worker
    peer = stack.peer
    customer = peer.create_customer(
        email="kim@example.com", name="Kim", card=CardSpec(outcomes=[INSUFFICIENT_FUNDS, SUCCEED])
    )
    invoice_id, _ = peer.bill(peer.create_subscription(customer_id=customer, unit_amount=2900))
    with worker_process(stack, tmp_path) as first:
        peer.deliver_pending()
        (case,) = wait_for(stack.cases, what="the case")
        with stack.app.runtime.session() as session:
            retry_now(session, case.id, policy=stack.app.runtime.policy, now=clock.now())
        peer.reply_delay = 30.0  # charge, then keep the worker waiting for the answer
        stack.tick()
        wait_for(lambda: peer.charge_attempts(invoice_id) == 2, what="the charge")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    peer.reply_delay = 0.0
    assert stack.cases()[0].state is DunningState.RETRYING  # the outcome was never recorded

    with (
        worker_process(stack, tmp_path),
        clock.use_clock(clock.ManualClock(clock.now() + RECLAIM_AFTER + timedelta(seconds=1))),
    ):
        assert stack.tick() >= 1  # the lost claim is handed out again
        wait_for(
            lambda: stack.cases()[0].state is DunningState.RECOVERED,
            timeout=60,
            what="recovery after the restart",
        )
        stack.tick()
        wait_for(lambda: stack.mail_with("email:recovered"), what="the recovered email")

    pays = [r for r in peer.requests if r.path.endswith("/pay")]
    assert len({r.idempotency_key for r in pays}) == 1  # the same key both times
    assert [r.replayed for r in pays] == [False, True]
    assert peer.charge_attempts(invoice_id) == 2  # the bill and one retry: never two
    assert len(stack.mail_with("email:recovered")) == 1
