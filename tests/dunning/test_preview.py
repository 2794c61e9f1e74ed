"""``policy preview`` shows what the pipeline plans: same classes, same times, same emails."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.support.paths import REPO, START
from tests.support.pipeline import deliver, dunning_record, failed, paid
from tests.support.processes import clean_env, dunning
from worker.billing.domain import Card, Decline
from worker.billing.models import Invoice
from worker.billing.stripe_client import PaymentResult
from worker.clock import ManualClock
from worker.config import Policy
from worker.dunning.models import ActionKind, ActionStatus, DunningCase
from worker.dunning.models import ScheduledAction as Action
from worker.dunning.preview import preview


def _pipeline_timeline(
    session: Session,
    policy: Policy,
    clock: ManualClock,
    code: str,
    *,
    brand: str | None,
    mac: str | None,
    prior: int,
) -> list[tuple[str, datetime, str | None]]:
    """Feed one failure, then fail every retry the pipeline plans, as the worker would.
    ``prior`` declines on the same card (other invoices) come first, spread over 30 days."""
    pm = (
        {
            "id": "pm_card",
            "object": "payment_method",
            "type": "card",
            "card": {
                "brand": brand,
                "last4": "4444",
                "exp_month": 1,
                "exp_year": 2030,
                "fingerprint": "fp_same_card",
            },
        }
        if brand
        else None
    )
    spacing = timedelta(days=30) / (prior + 1)
    for i in range(prior):
        earlier = START - spacing * (i + 1)
        deliver(
            session,
            policy,
            failed(f"in_prior_{i}", code, at=earlier, card=pm, network_advice_code=mac),
            now=earlier,
        )
        # Settled since: its declines count on the card, it plans no retries of its own.
        deliver(session, policy, paid(f"in_prior_{i}", at=earlier), now=earlier)
    deliver(session, policy, failed("in_p", code, card=pm, network_advice_code=mac))
    case_id = the_case_id(session, "in_p")
    seen = 0
    while True:
        retry = session.scalars(
            select(Action).where(
                Action.case_id == case_id,
                Action.kind == ActionKind.RETRY_PAYMENT,
                Action.status == ActionStatus.PLANNED,
            )
        ).first()
        if retry is None:
            break
        clock.set(retry.due_at)
        retry.status = ActionStatus.CLAIMED
        seen += 1
        card = Card("pm_card", brand, "4444", 1, 2030, "fp_same_card") if brand else None
        decline = Decline(
            code="card_declined",
            decline_code=code,
            charge_id=f"ch_ours_{seen}",
            network_advice_code=mac,
            card=card,
        )
        dunning_record(session, policy, retry.id, PaymentResult(succeeded=False, decline=decline))
    actions = session.scalars(
        select(Action).where(
            Action.case_id == case_id,
            Action.kind.not_in([ActionKind.FINAL_ACTION, ActionKind.NOTIFY_APP]),
            Action.status != ActionStatus.CANCELLED,
        )
    )
    return sorted((_PREVIEW_KIND[a.kind], a.due_at, a.template) for a in actions)


def the_case_id(session: Session, invoice_ref: str) -> int:
    return session.scalars(
        select(DunningCase.id)
        .join(Invoice, Invoice.id == DunningCase.invoice_id)
        .where(Invoice.provider_id == invoice_ref)
    ).one()


_PREVIEW_KIND = {
    ActionKind.RETRY_PAYMENT: "retry",
    ActionKind.SEND_EMAIL: "email",
    ActionKind.ACCESS_CHANGE: "access",
}


@pytest.mark.parametrize(
    ("code", "brand", "mac", "prior"),
    [
        ("insufficient_funds", None, None, 0),
        ("do_not_honor", None, None, 0),
        ("processing_error", None, None, 0),
        ("expired_card", None, None, 0),
        ("authentication_required", None, None, 0),
        ("stolen_card", None, None, 0),
        ("insufficient_funds", "mastercard", "27", 0),  # MAC 27: not before +4 days
        ("do_not_honor", "visa", None, 14),  # a card near its Visa budget
        ("do_not_honor", "visa", None, 16),  # over it: the first retries wait for room
    ],
)
def test_preview_matches_the_pipeline(
    session: Session,
    policy: Policy,
    manual_clock: ManualClock,
    code: str,
    brand: str | None,
    mac: str | None,
    prior: int,
) -> None:
    ran = _pipeline_timeline(session, policy, manual_clock, code, brand=brand, mac=mac, prior=prior)
    card = Card(None, brand) if brand else None
    shown = preview(
        policy,
        Decline(code="card_declined", decline_code=code, card=card, network_advice_code=mac),
        failed_at=START,
        timezone=None,
        amount=4900,
        prior_declines=prior,
    )
    assert sorted((a.kind, a.at, a.template) for a in shown.actions) == ran
    case = session.get_one(DunningCase, the_case_id(session, "in_p"))
    assert shown.decline_class.value == case.decline_class
    assert shown.final_action["at"] == case.window_ends_at
    if mac == "27":
        retries = [a.at for a in shown.actions if a.kind == "retry"]
        assert retries[0] >= START + timedelta(days=4)


def preview_cli(tmp_path: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    config = str(REPO / "config" / "dunning.toml")
    return dunning(
        clean_env(),
        tmp_path,
        "policy",
        "preview",
        "--decline-code",
        code,
        "--config",
        config,
        *args,
    )


@pytest.mark.parametrize(
    ("code", "retries"),
    [
        ("insufficient_funds", 5),  # 3 offsets and Fridays 6 and 13 March
        ("do_not_honor", 6),
        ("processing_error", 6),
        ("expired_card", 0),
        ("stolen_card", 0),
        ("revocation_of_authorization", 0),
        ("authentication_required", 0),
    ],
)
def test_preview_command_json(tmp_path: Path, code: str, retries: int) -> None:
    result = preview_cli(
        tmp_path,
        code,
        "--failed-at",
        "2026-03-02T15:00:00Z",
        "--timezone",
        "America/New_York",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert set(shown) >= {"class", "actions", "final_action"}
    assert sum(a["kind"] == "retry" for a in shown["actions"]) == retries
    assert all(a["at"].endswith("Z") for a in shown["actions"])
    first = shown["actions"][0]
    assert first["kind"] == "email"
    assert first["template"] == (
        "action_required" if code == "authentication_required" else "payment_failed"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--failed-at", "yesterday"], "--failed-at: not an ISO 8601 time"),
        (["--failed-at", "2026-03-02T15:00:00"], "--failed-at: give a timezone offset"),
        (["--timezone", "Mars/Base"], "--timezone: unknown IANA timezone"),
        (["--amount", "100"], "--amount and --currency go together"),
    ],
)
def test_preview_rejects_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    result = preview_cli(tmp_path, "do_not_honor", *args)
    assert result.returncode == 2
    assert message in result.stderr
