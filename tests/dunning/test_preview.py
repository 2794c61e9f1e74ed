"""``policy preview`` shows what the pipeline plans: same classes, same times, same emails."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.conftest import REPO, START
from tests.support.pipeline import deliver, dunning_record, failed, the_case
from tests.support.processes import clean_env, dunning
from worker.billing.domain import Decline
from worker.billing.stripe_client import PaymentResult
from worker.clock import ManualClock
from worker.config import Policy
from worker.dunning.models import ActionKind, ActionStatus
from worker.dunning.models import ScheduledAction as Action
from worker.dunning.preview import preview


def _pipeline_timeline(
    session: Session, policy: Policy, clock: ManualClock, code: str
) -> list[tuple[str, datetime, str | None]]:
    """Feed one failure, then fail every retry the pipeline plans, as the worker would."""
    deliver(session, policy, failed("in_p", code))
    seen = 0
    while True:
        retry = session.scalars(
            select(Action).where(
                Action.kind == ActionKind.RETRY_PAYMENT, Action.status == ActionStatus.PLANNED
            )
        ).first()
        if retry is None:
            break
        clock.set(retry.due_at)
        retry.status = ActionStatus.CLAIMED
        seen += 1
        decline = Decline(code="card_declined", decline_code=code, charge_id=f"ch_ours_{seen}")
        dunning_record(session, policy, retry.id, PaymentResult(succeeded=False, decline=decline))
    actions = session.scalars(select(Action).where(Action.kind != ActionKind.FINAL_ACTION))
    return sorted(
        ("retry" if a.kind is ActionKind.RETRY_PAYMENT else "email", a.due_at, a.template)
        for a in actions
    )


@pytest.mark.parametrize(
    "code",
    [
        "insufficient_funds",
        "do_not_honor",
        "processing_error",
        "expired_card",
        "authentication_required",
        "stolen_card",
    ],
)
def test_preview_matches_the_pipeline(
    session: Session, policy: Policy, manual_clock: ManualClock, code: str
) -> None:
    ran = _pipeline_timeline(session, policy, manual_clock, code)
    shown = preview(
        policy, Decline(code="card_declined", decline_code=code), failed_at=START, timezone=None
    )
    assert sorted((a.kind, a.at, a.template) for a in shown.actions) == ran
    assert shown.decline_class.value == the_case(session).decline_class
    assert shown.final_action["at"] == the_case(session).window_ends_at


@pytest.mark.parametrize(
    ("code", "retries"),
    [
        ("insufficient_funds", 5),
        ("do_not_honor", 4),
        ("processing_error", 4),
        ("expired_card", 0),
        ("stolen_card", 0),
        ("revocation_of_authorization", 0),
        ("authentication_required", 0),
    ],
)
def test_preview_command_json(tmp_path: Path, code: str, retries: int) -> None:
    result = dunning(
        clean_env(),
        tmp_path,
        "policy",
        "preview",
        "--decline-code",
        code,
        "--failed-at",
        "2026-03-02T15:00:00Z",
        "--timezone",
        "America/New_York",
        "--config",
        str(REPO / "config" / "dunning.toml"),
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
    result = dunning(
        clean_env(),
        tmp_path,
        "policy",
        "preview",
        "--decline-code",
        "do_not_honor",
        "--config",
        str(REPO / "config" / "dunning.toml"),
        *args,
    )
    assert result.returncode == 2
    assert message in result.stderr
