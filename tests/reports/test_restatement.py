"""A recovery or cancellation that lands after a period changes that period in the next
report, while ``--as-of`` still reproduces the earlier view exactly; and the command itself:
formats from one query path, the as-of time printed, bad input refused with exit status 2."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from tests.support.pipeline import deliver
from tests.support.processes import clean_env, dunning
from tests.support.worked_examples import (
    FEB,
    example_3,
    invoice_failed,
    invoice_paid,
    march,
    subscription_event,
)
from worker.clock import ManualClock
from worker.config import Policy
from worker.reports.build import build_report
from worker.reports.model import RECOVERY_COLUMNS, RETENTION_COLUMNS
from worker.reports.render import render

APRIL_2 = datetime(2026, 4, 2, tzinfo=UTC)


def _json(session: Session, kind: str, as_of: datetime) -> dict[str, object]:
    session.commit()
    built = build_report(session.get_bind(), kind, first="2026-03", last="2026-03", as_of=as_of)  # type: ignore[arg-type]
    return json.loads(render(built, "json"))


def test_late_facts_restate_march_and_as_of_reproduces_the_earlier_view(
    session: Session, policy: Policy, manual_clock: ManualClock
) -> None:
    created = subscription_event("created", "cus_X", "sub_X", 9_000, at=march(1))
    deliver(session, policy, created, now=march(1))
    y_created = subscription_event("created", "cus_Y", "sub_Y", 3_000, at=FEB)
    deliver(session, policy, y_created, now=FEB)
    deliver(session, policy, invoice_failed("in_X", "cus_X", "sub_X", 9_000, march(20)), march(20))
    manual_clock.set(APRIL_2)
    retention_then = _json(session, "retention", APRIL_2)
    recovery_then = _json(session, "recovery", APRIL_2)
    assert recovery_then["rows"][0]["recovered_count"] == 0  # type: ignore[index]
    assert retention_then["rows"][0]["ending_mrr"] == 12_000  # type: ignore[index]
    # April 10: the customer pays the March invoice; April 12: Y's cancellation, effective
    # 28 March, finally reaches us.
    april_10 = datetime(2026, 4, 10, tzinfo=UTC)
    manual_clock.set(april_10)
    paid = invoice_paid("in_X", "cus_X", "sub_X", 9_000, april_10)
    deliver(session, policy, paid, now=april_10)
    late_cancel = subscription_event(
        "deleted",
        "cus_Y",
        "sub_Y",
        3_000,
        at=march(28),
        status="canceled",
        cancellation_reason="cancellation_requested",
    )
    april_12 = datetime(2026, 4, 12, tzinfo=UTC)
    deliver(session, policy, late_cancel, now=april_12)
    manual_clock.set(april_12)
    now_retention = _json(session, "retention", april_12)
    now_recovery = _json(session, "recovery", april_12)
    row = now_recovery["rows"][0]  # type: ignore[index]
    assert (row["recovered_count"], row["recovered_amount"]) == (1, 9_000)
    assert row["recovered_by_method"] == {"customer": {"count": 1, "amount": 9_000}}
    march_row = now_retention["rows"][0]  # type: ignore[index]
    assert (march_row["starting_mrr"], march_row["new"]) == (3_000, 9_000)
    assert (march_row["churn_voluntary"], march_row["ending_mrr"]) == (3_000, 9_000)
    # The earlier view, reproduced exactly.
    assert _json(session, "retention", APRIL_2) == retention_then
    assert _json(session, "recovery", APRIL_2) == recovery_then


@pytest.fixture
def example_db(sqlite_url: str, policy: Policy, manual_clock: ManualClock) -> str:
    from worker.db import make_engine, make_sessionmaker

    engine = make_engine(sqlite_url)
    with make_sessionmaker(engine)() as session:
        example_3(session, policy, manual_clock)
        session.commit()
    engine.dispose()
    return sqlite_url


def test_every_format_comes_from_the_same_rows(example_db: str, tmp_path: Path) -> None:
    env = clean_env(DUNNING_DATABASE_URL=example_db)
    common = ["--from", "2026-03", "--to", "2026-03", "--as-of", "2026-06-01T00:00:00Z"]
    as_json = dunning(env, tmp_path, "report", "retention", *common, "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert "as of 2026-06-01T00:00:00+00:00" in as_json.stderr
    shown = json.loads(as_json.stdout)
    assert shown["as_of"] == "2026-06-01T00:00:00+00:00"
    (row,) = shown["rows"]
    assert (row["nrr"], row["grr"]) == ("41.88", "40.62")
    as_csv = dunning(env, tmp_path, "report", "retention", *common, "--format", "csv")
    assert as_csv.returncode == 0, as_csv.stderr
    lines = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert tuple(lines[0]) == ("as_of", *RETENTION_COLUMNS)
    assert {k: v for k, v in lines[0].items() if k in row} == {
        k: "" if v is None else str(v) for k, v in row.items()
    }
    table = dunning(env, tmp_path, "report", "retention", *common)
    assert table.returncode == 0, table.stderr
    assert "41.88" in table.stdout and "as of 2026-06-01" in table.stdout
    recovery = dunning(
        env, tmp_path, "report", "recovery", *common, "--format", "csv", "--out", "r.csv"
    )
    assert recovery.returncode == 0, recovery.stderr
    written = list(csv.DictReader((tmp_path / "r.csv").open(encoding="utf-8")))
    assert tuple(written[0]) == ("as_of", *RECOVERY_COLUMNS)
    assert written[0]["recovered_by_retry_amount"] == "25000"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "2026-13", "--to", "2026-12"], "expected a month as YYYY-MM"),
        (["--from", "2026-05", "--to", "2026-03"], "--to is before --from"),
        (["--from", "2026-03", "--to", "2026-03", "--as-of", "yesterday"], "--as-of"),
        (["--from", "2026-03", "--to", "2026-03", "--as-of", "2026-03-01T00:00"], "timezone"),
        (["--from", "2026-03", "--to", "2026-03", "--by", "week"], "--by"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    sqlite_url: str, tmp_path: Path, args: list[str], message: str
) -> None:
    result = dunning(
        clean_env(DUNNING_DATABASE_URL=sqlite_url), tmp_path, "report", "retention", *args
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_an_empty_ledger_reports_no_rows(sqlite_url: str, tmp_path: Path) -> None:
    env = clean_env(DUNNING_DATABASE_URL=sqlite_url)
    result = dunning(
        env,
        tmp_path,
        "report",
        "recovery",
        "--from",
        "2026-01",
        "--to",
        "2026-02",
        "--format",
        "json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == []
