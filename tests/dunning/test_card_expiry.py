"""Notices before a card expires, for PaymentMethods (Stripe sends no event for them): the
daily scan finds the default cards in the notice window, one notice per card and step, none
once the card changed or the network renewed it, and the report counts cards updated in
time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support.pipeline import deliver, run_claimed, task_runtime
from tests.support.smtp import smtp_server
from worker.cli import main
from worker.clock import ManualClock
from worker.config import Policy
from worker.dunning import expiring
from worker.dunning.models import CardExpiryNotice
from worker.dunning.models import ScheduledAction as Action
from worker.email.models import Notification
from worker.reports.cards import card_notice_report
from worker.sim.stripe_peer import CardSpec, StripePeer


def _customer(account: StripePeer, name: str, *, month: int, year: int, brand: str = "visa") -> str:
    card = CardSpec(exp_month=month, exp_year=year, brand=brand, last4=f"{month:02d}{year % 100}")
    return account.create_customer(email=f"{name}@example.test", name=name, card=card)


def _deliver_pending(session: Session, policy: Policy, account: StripePeer, now: datetime) -> None:
    for event in account.take_pending():
        deliver(session, policy, event, now=now)
    session.commit()


def _scan(session: Session, policy: Policy, url: str, now: datetime) -> expiring.ScanSummary:
    with task_runtime(session, policy, url) as runtime:
        summary = expiring.scan(runtime, now=now, requests_per_second=100, page_size=2)
    session.expire_all()
    return summary


def _notices(session: Session) -> dict[str, Action]:
    """Planned card-expiring notices by their key's last two parts (``YYYY-MM:Nd``), per pm."""
    rows = session.scalars(select(Action).where(Action.template == "card_expiring")).all()
    return {row.idempotency_key.split(":card-expiring:")[1]: row for row in rows}


def _send(session: Session, policy: Policy, url: str, action: Action, smtp_port: int) -> None:
    run_claimed(session, policy, url, action, smtp_url=f"smtp://127.0.0.1:{smtp_port}")


def test_the_scan_warns_each_expiring_card_once_per_step(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    account, url = peer
    policy = policy.model_copy(
        update={"card_expiry": policy.card_expiry.model_copy(update={"skip_brands": ["amex"]})}
    )
    ann = _customer(account, "ann", month=3, year=2026)  # ends 1 April: 29.4 days away
    _customer(account, "cal", month=12, year=2026)  # far away
    _customer(account, "dee", month=3, year=2026, brand="amex")  # the updater renews it
    _customer(account, "eve", month=1, year=2026)  # already expired: dunning's business
    _deliver_pending(session, policy, account, manual_clock.now())

    first = _scan(session, policy, url, manual_clock.now())
    assert (first.customers, first.cards, first.notices, first.pages) == (4, 4, 1, 2)
    (key,) = _notices(session)
    ann_pm = account.get(ann)["invoice_settings"]["default_payment_method"]
    assert key == f"{ann_pm}:2026-03:30d"
    notice = _notices(session)[key]
    assert notice.payment_method == ann_pm
    assert notice.due_at == manual_clock.now()  # 15:00 UTC: outside quiet hours

    assert _scan(session, policy, url, manual_clock.now()).notices == 0  # once per step

    manual_clock.set(datetime(2026, 3, 26, 9, 0, tzinfo=UTC))  # 6 days left
    assert _scan(session, policy, url, manual_clock.now()).notices == 1
    assert set(_notices(session)) == {f"{ann_pm}:2026-03:30d", f"{ann_pm}:2026-03:7d"}
    assert len(session.scalars(select(CardExpiryNotice)).all()) == 1  # one card


def test_a_late_first_scan_sends_only_the_nearest_step(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    account, url = peer
    _customer(account, "ann", month=3, year=2026)
    manual_clock.set(datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    _deliver_pending(session, policy, account, manual_clock.now())
    assert _scan(session, policy, url, manual_clock.now()).notices == 1
    (key,) = _notices(session)
    assert key.endswith(":2026-03:7d")


def test_no_notice_once_the_card_changed_or_was_renewed_and_the_report_counts_them(
    session: Session, policy: Policy, peer: tuple[StripePeer, str], manual_clock: ManualClock
) -> None:
    account, url = peer
    renewed = _customer(account, "ren", month=3, year=2026)
    changed = _customer(account, "cha", month=3, year=2026)
    ignored = _customer(account, "ign", month=3, year=2026)
    _deliver_pending(session, policy, account, manual_clock.now())
    assert _scan(session, policy, url, manual_clock.now()).notices == 3
    planned = _notices(session)

    with smtp_server() as (mail, port):
        # The network renews one card and a customer saves a new one before the notices go.
        manual_clock.advance(timedelta(minutes=5))
        account.update_card(renewed, CardSpec(exp_month=3, exp_year=2029), via="network_updater")
        account.update_card(changed, CardSpec(last4="1111"), via="customer")
        _deliver_pending(session, policy, account, manual_clock.now())
        for action in planned.values():
            _send(session, policy, url, action, port)
        notes = {session.get_one(Action, a.id).note for a in planned.values()}
        assert notes == {
            "skipped: the card was renewed",
            "skipped: the customer changed the card",
            "sent to i***@example.test",
        }
        (message,) = mail.messages
        assert message["To"] == "ign@example.test"
        assert "ign" in message["Subject"] or "card" in message["Subject"].lower()

    sent = session.scalars(select(Notification.dedupe_key)).all()
    assert len(sent) == 1
    assert sent[0].startswith(f"customer:{_customer_id(session, ignored)}:card-expiring:")

    manual_clock.set(datetime(2026, 4, 2, tzinfo=UTC))  # March is over
    (row,) = card_notice_report(session, "2026-01", "2026-06", now=manual_clock.now())
    assert row.as_dict() == {
        "expires": "2026-03",
        "cards": 3,
        "notices_sent": 1,
        "updated_before_expiry": 2,
        "by_customer": 1,
        "by_network": 1,
        "expired_unchanged": 1,
        "not_yet_expired": 0,
    }


def _customer_id(session: Session, provider_id: str) -> int:
    from worker.billing.models import Customer

    customer_id = session.scalar(select(Customer.id).where(Customer.provider_id == provider_id))
    assert customer_id is not None
    return customer_id


def test_the_commands(
    pg: str,
    policy: Policy,
    peer: tuple[StripePeer, str],
    monkeypatch: pytest.MonkeyPatch,
    manual_clock: ManualClock,
) -> None:
    account, url = peer
    _customer(account, "ann", month=3, year=2026)
    env: dict[str, Any] = {
        "DUNNING_DATABASE_URL": pg,
        "STRIPE_API_KEY": "sk_test_peer",
        "STRIPE_API_BASE": url,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    scanned = runner.invoke(main, ["cards", "scan-expiring", "--rate", "50"])
    assert scanned.exit_code == 0, scanned.output
    assert "notices planned:  1" in scanned.output
    report = runner.invoke(main, ["cards", "report", "--from", "2026-03", "--to", "2026-03"])
    assert report.exit_code == 0, report.output
    assert "2026-03" in report.output
    as_json = runner.invoke(
        main, ["cards", "report", "--from", "2026-03", "--to", "2026-03", "--json"]
    )
    assert '"cards": 1' in as_json.output
    bad = runner.invoke(main, ["cards", "report", "--from", "2026-13", "--to", "2026-03"])
    assert bad.exit_code == 2
    assert "--from" in bad.output
