"""The ops console through the CLI, against a real PostgreSQL (issue #12, item 5): pause,
resume and close cases; see, inspect and re-drive inbox events; one status screen; email
previews. Exit codes per DESIGN §3 (2: bad input, one line)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.paths import REPO
from tests.support.pipeline import failed
from tests.support.processes import clean_env, dunning
from worker import clock
from worker.config import load_policy
from worker.runtime import Runtime
from worker.settings import Settings
from worker.webhooks.inbox import sweep_inbox
from worker.webhooks.service import process_stored_event


@pytest.fixture
def env(pg: str) -> dict[str, str]:
    return {
        **clean_env(),
        "DUNNING_DATABASE_URL": pg,
        "DUNNING_CONFIG": str(REPO / "config" / "dunning.toml"),
    }


def _replay(env: dict[str, str], tmp_path: Path, *events: dict[str, Any]) -> None:
    file = tmp_path / "events.jsonl"
    file.write_text("".join(json.dumps(e) + "\n" for e in events))
    done = dunning(env, tmp_path, "events", "replay", str(file))
    assert done.returncode == 0, done.stderr


def _show(env: dict[str, str], tmp_path: Path, case_id: int) -> dict[str, Any]:
    shown = dunning(env, tmp_path, "cases", "show", str(case_id), "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def _bad(done: Any, words: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    last = done.stderr.strip().splitlines()[-1]  # click's usage errors come with usage lines
    assert last.startswith("Error: ") and words in last, done.stderr


def test_pause_resume_close_through_the_cli(env: dict[str, str], tmp_path: Path) -> None:
    now = clock.now()  # the CLI runs on the wall clock
    _replay(env, tmp_path, failed("in_p1", at=now), failed("in_p2", at=now))
    first, second = (
        c["id"] for c in json.loads(dunning(env, tmp_path, "cases", "list", "--json").stdout)
    )

    paused = dunning(env, tmp_path, "cases", "pause", str(first), "--reason", "customer called")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == f"case {first}: paused"
    shown = _show(env, tmp_path, first)
    assert shown["state"] == "paused"
    assert shown["transitions"][-1]["reason"] == "ops: customer called"
    assert shown["transitions"][-1]["source"] == "ops"
    assert {a["status"] for a in shown["actions"]} == {"cancelled"}

    resumed = dunning(env, tmp_path, "cases", "resume", str(first))
    assert resumed.returncode == 0, resumed.stderr
    assert re.fullmatch(rf"case {first}: \w+, window now ends \S+ \S+ UTC", resumed.stdout.strip())
    shown = _show(env, tmp_path, first)
    assert shown["state"] == "retrying"
    assert shown["transitions"][-1]["reason"] == "ops: by ops"
    planned = [a for a in shown["actions"] if a["status"] == "planned"]
    assert {a["kind"] for a in planned} >= {"send_email", "final_action", "retry_payment"}

    _bad(dunning(env, tmp_path, "cases", "close", str(first)), "Missing option '--reason'")
    closed = dunning(env, tmp_path, "cases", "close", str(first), "--reason", "refunded")
    assert closed.returncode == 0, closed.stderr
    shown = _show(env, tmp_path, first)
    assert (shown["state"], shown["transitions"][-1]["reason"]) == ("closed", "ops: refunded")
    assert not [a for a in shown["actions"] if a["status"] == "planned"]

    _bad(dunning(env, tmp_path, "cases", "resume", str(first)), "is closed: cannot resume it")
    _bad(dunning(env, tmp_path, "cases", "pause", "999"), "no dunning case 999")
    _bad(
        dunning(env, tmp_path, "cases", "pause", str(second), "--customer", "cus_test"),
        "not both",
    )
    _bad(dunning(env, tmp_path, "cases", "pause"), "not both")
    _bad(dunning(env, tmp_path, "cases", "pause", "--customer", "cus_nobody"), "no customer")

    # --customer: every case of the customer the move applies to (the closed one is not).
    by_customer = dunning(env, tmp_path, "cases", "pause", "--customer", "cus_test")
    assert by_customer.returncode == 0, by_customer.stderr
    assert by_customer.stdout.strip() == f"case {second}: paused"
    again = dunning(env, tmp_path, "cases", "pause", "--customer", "cus_test")
    assert again.stdout.strip() == "cus_test: no case to pause"


def _sql(pg: str, sql: str, *args: Any) -> None:
    with psycopg.connect(pg.replace("+psycopg", "")) as conn:
        conn.execute(sql, args)


def test_events_list_show_and_retry(env: dict[str, str], pg: str, tmp_path: Path) -> None:
    good = failed("in_e1", at=clock.now())
    good["data"]["object"]["customer_email"] = "jane.doe@example.com"
    broken = failed("in_e2", at=clock.now())
    broken["data"]["object"]["amount_due"] = "not a number"  # fails parsing: kept, failed
    file = tmp_path / "events.jsonl"
    file.write_text(json.dumps(good) + "\n" + json.dumps(broken) + "\n")
    replayed = dunning(env, tmp_path, "events", "replay", str(file))
    assert replayed.returncode == 1  # one failed
    listed = json.loads(dunning(env, tmp_path, "events", "list", "--json").stdout)
    # Newest first; the broken one failed, with the reason.
    assert [(e["event_id"], e["status"]) for e in listed] == [
        (broken["id"], "failed"),
        (good["id"], "processed"),
    ]
    failed_row = next(e for e in listed if e["event_id"] == broken["id"])
    assert failed_row["error"]

    only = json.loads(
        dunning(env, tmp_path, "events", "list", "--status", "processed", "--json").stdout
    )
    assert [e["event_id"] for e in only] == [good["id"]]
    typed = json.loads(
        dunning(env, tmp_path, "events", "list", "--type", "invoice.paid", "--json").stdout
    )
    assert typed == []
    table = dunning({**env, "COLUMNS": "100"}, tmp_path, "events", "list", "--limit", "10")
    assert table.returncode == 0, table.stderr
    assert good["id"] in table.stdout and broken["id"] in table.stdout
    assert max(len(line) for line in table.stdout.splitlines()) <= 100

    shown = dunning(env, tmp_path, "events", "show", good["id"])
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["payload"]["id"] == good["id"]
    assert "jane.doe@example.com" not in shown.stdout  # masked unless asked
    full = dunning(env, tmp_path, "events", "show", str(detail["id"]), "--unmasked")
    assert "jane.doe@example.com" in full.stdout
    _bad(dunning(env, tmp_path, "events", "show", "evt_nope"), "no event evt_nope")

    # Fix the cause (here: its stored payload, as a code fix would make it parse) and
    # re-drive it through the normal path.
    _bad(dunning(env, tmp_path, "events", "retry", good["id"]), "was processed")
    _bad(dunning(env, tmp_path, "events", "retry"), "not both")
    fixed = {**broken, "data": {"object": {**broken["data"]["object"], "amount_due": 2000}}}
    _sql(
        pg,
        "UPDATE inbox_events SET payload = %s WHERE event_id = %s",
        json.dumps(fixed),
        broken["id"],
    )
    retried = dunning(env, tmp_path, "events", "retry", "--failed")
    assert retried.returncode == 0, retried.stderr
    assert "1 event(s) pending again" in retried.stdout and broken["id"] in retried.stdout
    status = json.loads(dunning(env, tmp_path, "status", "--json").stdout)
    assert status["backlog"]["pending_events"] == 1 and status["failed_events"] == 0
    assert dunning(env, tmp_path, "events", "retry", "--failed").stdout.strip() == (
        "no failed events"
    )
    # The scheduler's next tick hands it out; a worker processes it like any other event.
    runtime = Runtime(Settings(database_url=pg), policy=load_policy(REPO / "config/dunning.toml"))
    try:
        with runtime.session() as session:
            (inbox_id,) = sweep_inbox(session, now=clock.now())
        process_stored_event(runtime, inbox_id)
    finally:
        runtime.close()
    listed = json.loads(dunning(env, tmp_path, "events", "list", "--json").stdout)
    assert [e["status"] for e in listed] == ["processed", "processed"]
    cases = json.loads(dunning(env, tmp_path, "cases", "list", "--json").stdout)
    assert sorted(c["invoice_id"] for c in cases) == ["in_e1", "in_e2"]


def test_status_is_one_screen(env: dict[str, str], tmp_path: Path) -> None:
    assert dunning(env, tmp_path, "db", "upgrade").returncode == 0
    screen = dunning({**env, "COLUMNS": "100"}, tmp_path, "status")
    assert screen.returncode == 0, screen.stderr
    lines = screen.stdout.splitlines()
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 100
    for row in ("database", "broker", "scheduler", "events", "actions", "open cases"):
        assert row in screen.stdout
    assert "never ticked" in screen.stdout
    down = dunning({**env, "DUNNING_BROKER_URL": "redis://127.0.0.1:1/0"}, tmp_path, "status")
    assert down.returncode == 1
    assert "broker unreachable" in down.stderr
    assert "down redis://127.0.0.1:1" in down.stdout


def test_emails_preview(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "reminder.html"
    done = dunning(
        env, tmp_path, "emails", "preview", "reminder", "--locale", "fr", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Subject: ")
    assert "49,00" in done.stdout  # the sample amount, in French
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") or "<html" in html
    assert 'lang="fr"' in html
    default = dunning(env, tmp_path, "emails", "preview", "payment_failed")
    assert (tmp_path / ".dunning" / "preview" / "payment_failed.en_US.html").is_file(), (
        default.stdout
    )
    _bad(dunning(env, tmp_path, "emails", "preview", "nope"), "unknown template 'nope'")
    _bad(
        dunning(env, tmp_path, "emails", "preview", "reminder", "--out", "/proc/no/x.html"),
        "--out: cannot write",
    )
    _bad(dunning(env, tmp_path, "emails", "preview", "reminder", "--locale", "xx_YY"), "--locale")
