"""The end-to-end stack the e2e tests drive (its fixtures are in ``tests/e2e/conftest.py``):
the Celery app, the Stripe-compatible peer, the intake and the SMTP recorder, plus waiting for
what a worker thread does."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

import worker.webhooks.tasks
from tests.support.smtp import Recorder
from worker.app import DunningCelery
from worker.dunning.models import DunningCase
from worker.settings import Settings
from worker.sim.stripe_peer import StripePeer

API_KEY = "sk_test_e2e"
WEBHOOK_SECRET = "whsec_e2e"


@dataclass
class Stack:
    app: DunningCelery
    settings: Settings
    peer: StripePeer
    intake_url: str
    mail: Recorder

    def tick(self) -> int:
        return worker.webhooks.tasks.tick_once(self.app)

    def cases(self) -> list[DunningCase]:
        with self.app.runtime.session() as session:
            return list(session.scalars(select(DunningCase).order_by(DunningCase.id)))

    def mail_with(self, template_word: str) -> list[Any]:
        return [m for m in self.mail.messages if template_word in (m["X-Dunning-Key"] or "")]


def wait_for(predicate: Callable[[], Any], *, timeout: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            msg = f"timed out waiting for {what or predicate}"
            raise AssertionError(msg)
        time.sleep(0.05)
