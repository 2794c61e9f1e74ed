"""``dunning demo`` on a bare environment: no variables, no config/ in the working directory."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.support.processes import clean_env


def test_demo_runs_the_pipeline_and_summarises(tmp_path: Path) -> None:
    env = clean_env()
    out = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "demo",
            "--customers",
            "40",
            "--seed",
            "11",
            "--out",
            str(out),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Recovery summary" in result.stdout
    assert list(tmp_path.iterdir()) == [out]  # nothing written outside its folder (no control/)
    assert "involuntary churn" in result.stdout
    with sqlite3.connect(out / "dunning.db") as db:
        states = dict(db.execute("SELECT state, count(*) FROM dunning_cases GROUP BY state"))
        methods = {
            m
            for (m,) in db.execute(
                "SELECT DISTINCT recovered_method FROM dunning_cases WHERE state = 'recovered'"
            )
        }
        churn = db.execute(
            "SELECT count(*) FROM ledger_movements WHERE kind = 'churn_involuntary'"
        ).fetchone()[0]
        sent = db.execute("SELECT count(*) FROM notifications").fetchone()[0]
        notices = db.execute(
            "SELECT count(*) FROM notifications WHERE template = 'card_expiring'"
        ).fetchone()[0]
        inbox = dict(db.execute("SELECT status, count(*) FROM inbox_events GROUP BY status"))
    # A month is long enough for every case to end one way or the other.
    assert set(states) == {"recovered", "churned"}
    assert churn == states["churned"]
    assert "retry" in methods
    assert "backup_method" in methods  # an expired card, and another saved card paid
    assert notices > 0  # the daily scan warned of cards expiring this month
    languages = re.search(r"emails by language\s*│ (.*?)│", result.stdout)
    assert languages is not None
    assert len(re.findall(r"[a-z_A-Z]+: \d+", languages[1])) >= 2
    assert "card-expiry notices sent" in result.stdout
    assert inbox.get("pending", 0) == 0
    assert "failed" not in inbox
    emails = list((out / "outbox").glob("*.eml"))
    assert len(emails) == sent > 0
    assert f"{sent} → " in result.stdout.replace("\n", "")
