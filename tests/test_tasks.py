"""Every task is registered with an explicit name and only options Celery knows (STYLE H3)."""

from __future__ import annotations

from pathlib import Path

from celery import Task

from tests.support.paths import REPO
from worker.app import ROUTES, create_app
from worker.settings import Settings

EXPECTED = {
    "webhooks.process_event",
    "dunning.tick",
    "dunning.retry_payment",
    "dunning.send_email",
    "dunning.final_action",
    "cards.scan_expiring",
    "dunning.access_change",
    "dunning.notify_app",
}
# Task class attributes, plus the options Celery's task decorator documents but does not
# declare on Task (autoretry), plus what the decorator itself sets.
KNOWN_OPTIONS = set(vars(Task)) | {
    "autoretry_for",
    "dont_autoretry_for",
    "retry_kwargs",
    "retry_backoff",
    "retry_backoff_max",
    "retry_jitter",
    "store_eager_result",
    "run",
    "_decorated",
    "_decorated_fun",
}


def test_tasks_are_registered_named_and_routed(tmp_path: Path) -> None:
    app = create_app(Settings(config_path=REPO / "config" / "dunning.toml", data_dir=tmp_path))
    ours = {name for name in app.tasks if not name.startswith("celery.")}
    assert ours == EXPECTED
    for name in ours:
        task = app.tasks[name]
        unknown = {
            key for key in vars(type(task)) if key not in KNOWN_OPTIONS and not key.startswith("__")
        }
        assert unknown == set(), f"{name}: unknown task options {unknown}"
        assert any(name == r or (r.endswith("*") and name.startswith(r[:-1])) for r in ROUTES)


def test_the_beat_runs_the_card_expiry_scan_daily() -> None:
    from worker.schedule import beat_schedule

    entry = beat_schedule()["card-expiry-scan"]
    assert entry["task"] == "cards.scan_expiring"
    assert entry["schedule"] == 24 * 3600
