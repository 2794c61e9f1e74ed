"""Graded access for the customer's app: signed webhooks on the [access] schedule, delivered
at least once (retried on 500, nothing lost across a restart, a delivery log), and an
authenticated endpoint the app polls for its banner."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.paths import REPO, START
from tests.support.pipeline import deliver, failed, paid
from worker import appwebhook, clock
from worker.app import create_app
from worker.cli import main
from worker.clock import ManualClock
from worker.config import Policy
from worker.dunning.actions import run_action
from worker.dunning.models import ActionKind, ActionStatus, AppEvent, DunningCase
from worker.dunning.models import ScheduledAction as Action
from worker.dunning.scheduler import claim_due
from worker.httpserver import serve_in_thread
from worker.runtime import Runtime
from worker.settings import Secret, SettingError, Settings, load_settings
from worker.webhooks.intake import build_intake

SECRET = "app-webhook-secret-" + "s" * 20
TOKEN = "app-api-token-" + "t" * 24


@dataclass
class Receiver:
    """The customer's app: verifies each signature, answers with ``statuses`` in turn."""

    statuses: list[int] = field(default_factory=lambda: [200])
    received: list[dict[str, object]] = field(default_factory=list)
    refused: int = 0

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        header = request.headers.get(appwebhook.SIGNATURE_HEADER, "")
        if not appwebhook.verify(SECRET, body, header, now=int(clock.now().timestamp())):
            self.refused += 1
            return Response(status_code=400)
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        if status < 300:
            self.received.append(json.loads(body))
        return Response(status_code=status)


@pytest.fixture
def app_url() -> Iterator[tuple[Receiver, str]]:
    receiver = Receiver()
    with serve_in_thread(
        Starlette(routes=[Route("/hooks", receiver.hook, methods=["POST"])])
    ) as url:
        yield receiver, f"{url}/hooks"


def _runtime(session: Session, policy: Policy, url: str) -> Runtime:
    session.commit()
    db = session.get_bind().url.render_as_string(hide_password=False)  # type: ignore[union-attr]
    settings = Settings(database_url=db, app_webhook_url=url, app_webhook_secret=Secret(SECRET))
    return Runtime(settings, policy=policy)


def _deliver_due(session: Session, policy: Policy, url: str) -> list[str]:
    """One scheduler tick's NOTIFY_APP and ACCESS_CHANGE actions, run by a fresh process
    (nothing carried over in memory): the notes they end with."""
    runtime = _runtime(session, policy, url)
    try:
        with runtime.session() as db:
            claimed = [c for c in claim_due(db, now=clock.now())]
        for item in claimed:
            if item.kind in (ActionKind.NOTIFY_APP, ActionKind.ACCESS_CHANGE):
                run_action(runtime, item.kind, item.action_id)
    finally:
        runtime.close()
    session.expire_all()
    return [
        session.get_one(Action, c.action_id).note or ""
        for c in claimed
        if c.kind is ActionKind.NOTIFY_APP
    ]


def _types(receiver: Receiver) -> list[str]:
    return [str(event["type"]) for event in receiver.received]


def test_the_app_hears_of_every_step_signed_and_at_least_once(
    session: Session,
    policy: Policy,
    app_url: tuple[Receiver, str],
    manual_clock: ManualClock,
) -> None:
    receiver, url = app_url
    receiver.statuses = [500, 200]  # the app is down for the first delivery
    deliver(session, policy, failed("in_acc1", at=START), now=START)
    case = session.scalars(select(DunningCase)).one()
    assert case.access == "grace"
    planned = session.scalars(select(Action).where(Action.kind == ActionKind.ACCESS_CHANGE)).all()
    assert sorted((a.template, a.due_at) for a in planned) == [
        ("blocked", START + timedelta(days=14)),
        ("limited", START + timedelta(days=7)),
    ]

    notes = _deliver_due(session, policy, url)
    assert any(note.startswith("HTTP 500; tried again at") for note in notes)
    assert receiver.refused == 0
    # A restart: nothing in memory; the pending delivery is in the database and goes out
    # once its back-off has passed.
    manual_clock.advance(timedelta(minutes=5))
    _deliver_due(session, policy, url)
    assert sorted(_types(receiver)) == ["access.grace", "case.opened"]
    opened = next(e for e in receiver.received if e["type"] == "case.opened")
    assert opened["data"] == {
        "customer": "cus_test",
        "invoice": "in_acc1",
        "case": case.id,
        "access": "grace",
        "amount_due": 4900,
        "currency": "usd",
        "window_ends_at": (START + timedelta(days=14)).isoformat(),
    }
    assert opened["created"] == int(START.timestamp())
    retried = session.scalars(select(AppEvent).where(AppEvent.attempts == 2)).one()
    assert retried.delivered_at is not None and retried.last_status == 200

    manual_clock.set(START + timedelta(days=7))
    _deliver_due(session, policy, url)  # the access change, then its event
    _deliver_due(session, policy, url)
    assert _types(receiver)[-1] == "access.limited"

    deliver(session, policy, paid("in_acc1", at=manual_clock.now()), now=manual_clock.now())
    _deliver_due(session, policy, url)
    assert _types(receiver)[-2:] == ["access.restored", "case.recovered"]
    blocked = session.scalars(
        select(Action).where(Action.idempotency_key == f"case:{case.id}:access:blocked")
    ).one()
    assert blocked.status is ActionStatus.CANCELLED  # a paid invoice is never blocked
    assert len(receiver.received) == len({e["id"] for e in receiver.received})  # once each


def test_a_churned_case_stays_blocked(
    session: Session, policy: Policy, app_url: tuple[Receiver, str], manual_clock: ManualClock
) -> None:
    from tests.support import stripe_events as ev

    receiver, url = app_url
    deliver(session, policy, failed("in_acc2", at=START), now=START)
    manual_clock.set(START + timedelta(days=8))
    _deliver_due(session, policy, url)
    _deliver_due(session, policy, url)
    ended = ev.envelope(
        "customer.subscription.deleted",
        ev.subscription(
            status="canceled", at=manual_clock.now(), cancellation_reason="payment_failed"
        ),
        at=manual_clock.now(),
    )
    deliver(session, policy, ended, now=manual_clock.now())
    _deliver_due(session, policy, url)
    assert _types(receiver)[-2:] == ["access.blocked", "case.churned"]
    assert session.scalars(select(DunningCase)).one().access == "blocked"


def test_the_app_polls_its_customers_access(
    pg: str, redis_url: str, tmp_path: Path, policy: Policy, manual_clock: ManualClock
) -> None:
    app = create_app(
        Settings(
            database_url=pg,
            broker_url=redis_url,
            config_path=REPO / "config" / "dunning.toml",
            stripe_webhook_secret=Secret("whsec_access"),
            app_api_token=Secret(TOKEN),
            data_dir=tmp_path,
        )
    )
    with app.runtime.session() as session:
        deliver(session, policy, failed("in_acc3", at=START), now=START)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serve_in_thread(build_intake(app)) as intake:
        found = httpx.get(f"{intake}/v1/customers/cus_test/access", headers=auth, timeout=10)
        assert found.status_code == 200
        body = found.json()
        assert body["access"] == "grace"
        assert body["since"] == START.isoformat()
        assert [i["invoice"] for i in body["open_invoices"]] == ["in_acc3"]
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            refused = httpx.get(
                f"{intake}/v1/customers/cus_test/access", headers=headers, timeout=10
            )
            assert refused.status_code == 401
        unknown = httpx.get(f"{intake}/v1/customers/cus_nobody/access", headers=auth, timeout=10)
        assert unknown.status_code == 404
    app.runtime.close()


def test_the_delivery_log(
    session: Session,
    policy: Policy,
    app_url: tuple[Receiver, str],
    manual_clock: ManualClock,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver, url = app_url
    receiver.statuses = [503]
    deliver(session, policy, failed("in_acc4", at=START), now=START)
    _deliver_due(session, policy, url)
    session.commit()  # the command reads through its own connection
    monkeypatch.setenv("DUNNING_DATABASE_URL", db_url)
    result = CliRunner().invoke(main, ["deliveries", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {(r["type"], r["status"], r["attempts"], r["last_status"]) for r in rows} == {
        ("case.opened", "pending", 1, 503),
        ("access.grace", "pending", 1, 503),
    }
    manual_clock.advance(timedelta(days=3, minutes=1))  # past the delivery horizon
    _deliver_due(session, policy, url)
    session.commit()
    failed_rows = CliRunner().invoke(main, ["deliveries", "list", "--status", "failed", "--json"])
    assert len(json.loads(failed_rows.output)) == 2
    table = CliRunner().invoke(main, ["deliveries", "list"])
    assert "case.opened" in table.output


def test_app_settings_are_checked() -> None:
    with pytest.raises(SettingError, match="DUNNING_APP_WEBHOOK_SECRET"):
        load_settings({"DUNNING_APP_WEBHOOK_URL": "https://app.example.com/hooks"})
    with pytest.raises(SettingError, match="DUNNING_APP_API_TOKEN"):
        load_settings({"DUNNING_APP_API_TOKEN": "short"})
    settings = load_settings(
        {
            "DUNNING_APP_WEBHOOK_URL": "https://app.example.com/hooks/",
            "DUNNING_APP_WEBHOOK_SECRET": SECRET,
        }
    )
    assert settings.app_webhook_url == "https://app.example.com/hooks/"
    assert SECRET not in repr(settings)


def test_a_payment_told_late_is_still_the_last_word(
    session: Session, policy: Policy, app_url: tuple[Receiver, str], manual_clock: ManualClock
) -> None:
    receiver, url = app_url
    deliver(session, policy, failed("in_acc9", at=START), now=START)
    _deliver_due(session, policy, url)
    # Paid a minute before day 7; Stripe's invoice.paid reaches us after the limit was set.
    manual_clock.set(START + timedelta(days=7))
    _deliver_due(session, policy, url)
    _deliver_due(session, policy, url)
    manual_clock.set(START + timedelta(days=7, minutes=9))
    paid_at = START + timedelta(days=7) - timedelta(minutes=1)
    deliver(session, policy, paid("in_acc9", at=paid_at), now=manual_clock.now())
    _deliver_due(session, policy, url)
    access = [e for e in receiver.received if str(e["type"]).startswith("access.")]
    last = max(access, key=lambda e: (e["created"], _types(receiver).index(str(e["type"]))))
    assert last["type"] == "access.restored"
