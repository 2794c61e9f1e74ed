"""The ops commands against a real database: cases, replay, run. Exit codes per DESIGN §3."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import stripe_events as ev
from tests.support.paths import REPO, START
from tests.support.pipeline import failed
from tests.support.processes import clean_env, dunning, free_port


@pytest.fixture
def env(pg: str) -> dict[str, str]:
    return {
        **clean_env(),
        "DUNNING_DATABASE_URL": pg,
        "DUNNING_CONFIG": str(REPO / "config" / "dunning.toml"),
    }


def _failed(invoice_id: str, code: str) -> dict[str, object]:
    pi = ev.payment_intent(
        pi_id=f"pi_{invoice_id}", charge_id=f"ch_{invoice_id}", decline_code=code
    )
    return ev.envelope(
        "invoice.payment_failed",
        ev.invoice(invoice_id=invoice_id, shape="acacia", payment_intent=pi, at=START),
        at=START,
        shape="acacia",
    )


def test_replay_then_inspect_cases(env: dict[str, str], tmp_path: Path) -> None:
    events = [
        _failed("in_a", "insufficient_funds"),
        _failed("in_b", "expired_card"),
        ev.envelope(
            "invoice.paid", ev.invoice(invoice_id="in_a", status="paid", at=START), at=START
        ),
    ]
    events.append(events[0])  # a duplicate in the file is processed once
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    replayed = dunning(env, tmp_path, "events", "replay", str(jsonl))
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout) == {"events": 4, "duplicate": 1, "processed": 3}

    listed = json.loads(dunning(env, tmp_path, "cases", "list", "--json").stdout)
    assert [(c["invoice_id"], c["state"], c["decline_code"]) for c in listed] == [
        ("in_a", "recovered", "insufficient_funds"),
        ("in_b", "awaiting_customer", "expired_card"),
    ]
    # History already resolved in_a: it plans nothing, not even a "thank you" months late.
    assert listed[0]["next_action_at"] is None
    only = json.loads(
        dunning(env, tmp_path, "cases", "list", "--state", "recovered", "--json").stdout
    )
    assert [c["invoice_id"] for c in only] == ["in_a"]

    b = listed[1]["id"]
    shown = json.loads(dunning(env, tmp_path, "cases", "show", str(b), "--json").stdout)
    assert shown["state"] == "awaiting_customer"
    assert shown["transitions"][0]["event"] == "payment_failed_hard"
    # A failure from March replayed today is past its window: no email, no retry; only the
    # final action, which asks the provider before acting, and the app's access levels,
    # all due now.
    assert {a["kind"] for a in shown["actions"]} == {"final_action", "access_change"}
    text = dunning(env, tmp_path, "cases", "show", str(b))
    assert text.returncode == 0
    assert "awaiting_customer" in text.stdout
    assert "payment_failed_hard" in text.stdout
    table = dunning(env, tmp_path, "cases", "list")
    assert "in_b" in table.stdout

    planned = dunning(env, tmp_path, "cases", "retry-now", str(b))
    assert planned.returncode == 0
    assert "dunning:in_b:retry:1" in planned.stdout
    done = dunning(env, tmp_path, "cases", "retry-now", str(listed[0]["id"]))
    assert (done.returncode, done.stderr.strip()) == (
        2,
        f"Error: case {listed[0]['id']} is recovered: nothing to retry",
    )


def test_one_event_that_fails_does_not_stop_a_replay(env: dict[str, str], tmp_path: Path) -> None:
    """An amount no database column holds crashes its handler; the events after it are
    still processed, the failed one stays in the inbox with the reason, and the exit status
    says something failed."""
    huge = _failed("in_huge", "insufficient_funds")
    huge["data"]["object"]["amount_due"] = 10**30  # type: ignore[index]
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text("\n".join(json.dumps(e) for e in [huge, _failed("in_ok", "expired_card")]))
    replayed = dunning(env, tmp_path, "events", "replay", str(jsonl))
    assert replayed.returncode == 1, replayed.stderr
    assert json.loads(replayed.stdout) == {"events": 2, "duplicate": 0, "failed": 1, "processed": 1}
    assert "1 of 2 events failed" in replayed.stderr
    listed = json.loads(dunning(env, tmp_path, "cases", "list", "--json").stdout)
    assert [c["invoice_id"] for c in listed] == ["in_ok"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cases", "show", "999"], "no dunning case 999"),
        (["cases", "retry-now", "999"], "no dunning case 999"),
        (["cases", "list", "--state", "lost"], "--state: unknown state 'lost'"),
    ],
)
def test_bad_input_is_one_line_and_status_2(
    env: dict[str, str], tmp_path: Path, args: list[str], message: str
) -> None:
    result = dunning(env, tmp_path, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_replay_rejects_a_bad_file_before_touching_anything(
    env: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_failed("in_c", "do_not_honor")) + "\n{oops\n")
    result = dunning(env, tmp_path, "events", "replay", str(bad))
    assert result.returncode == 2
    assert f"{bad}:2: malformed JSON" in result.stderr
    listed = json.loads(dunning(env, tmp_path, "cases", "list", "--json").stdout)
    assert listed == []


def test_database_down_is_a_runtime_failure(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DUNNING_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x",
        "DUNNING_CONFIG": str(REPO / "config" / "dunning.toml"),
    }
    result = dunning(env, tmp_path, "cases", "list")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: database: ")


def test_run_serves_works_and_stops_on_embedded_defaults(tmp_path: Path) -> None:
    secret = "whsec_run"
    env = clean_env(
        STRIPE_WEBHOOK_SECRET=secret, DUNNING_CONFIG=str(REPO / "config" / "dunning.toml")
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "run", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "dunning run did not become ready"
            time.sleep(0.2)
        body = json.dumps(
            ev.envelope("customer.subscription.created", ev.subscription(at=START), at=START)
        ).encode()
        t = int(time.time())
        sig = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        response = httpx.post(
            f"{url}/webhooks/stripe",
            content=body,
            headers={"Stripe-Signature": f"t={t},v1={sig}"},
            timeout=10,
        )
        assert response.status_code == 200
        db = tmp_path / ".dunning" / "dunning.db"  # the embedded default, in the data dir
        deadline = time.monotonic() + 30
        while True:
            with sqlite3.connect(db) as conn:
                (status,) = conn.execute("SELECT status FROM inbox_events").fetchone()
            if status == "processed":
                break
            assert time.monotonic() < deadline, f"event still {status}"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_status_says_what_is_waiting(env: dict[str, str], tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(failed("in_st", at=START)) + "\n")
    assert dunning(env, tmp_path, "events", "replay", str(events)).returncode == 0
    shown = json.loads(dunning(env, tmp_path, "status", "--json").stdout)
    # The replayed failure's emails and retry are long past their time (it is from March).
    assert shown["backlog"]["pending_events"] == 0
    assert shown["backlog"]["overdue_actions"] >= 1
    assert shown["backlog"]["oldest_overdue_action_s"] > 0
    assert shown["due_actions"] >= shown["backlog"]["overdue_actions"]
    assert shown["open_cases"]["retrying"] == 1
    screen = dunning(env, tmp_path, "status").stdout
    assert "0 pending, 0 failed" in screen
    assert "overdue (oldest" in screen
