"""The Grafana dashboard's shape: importable, every panel on the data source variable, and
every signal the README promises on it. That each query names only what the processes
really expose is checked against a live scrape in ``tests/e2e/test_observability.py``."""

from __future__ import annotations

from tests.support import dashboard


def test_the_dashboard_is_importable_and_complete() -> None:
    board = dashboard.load()
    assert board["uid"] == "dunning-worker"
    (variable,) = board["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    panels = list(dashboard.panels(board))
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]

    named = set().union(*(q.metrics() for q in dashboard.queries(board)))
    assert named >= {
        "dunning_intake_requests_total",
        "dunning_intake_request_duration_seconds_bucket",
        "dunning_events_processed_total",
        "dunning_task_duration_seconds_bucket",
        "dunning_tasks_total",
        "dunning_actions_due",
        "dunning_actions_oldest_overdue_seconds",
        "dunning_stripe_requests_total",
        "dunning_emails_total",
    }
    rate_limited = [
        q
        for q in dashboard.queries(board)
        if ("dunning_stripe_requests_total", "outcome", "=", "rate_limited") in set(q.matchers())
    ]
    assert rate_limited, "no panel shows Stripe's 429s"
