"""The webhook intake over real HTTP, against PostgreSQL and a Redis broker."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import select

import worker.webhooks.tasks
from tests.support import stripe_events as ev
from tests.support.faults import hanging_port
from tests.support.metrics import scrape
from tests.support.paths import REPO, START
from worker import clock
from worker.app import DunningCelery, create_app
from worker.billing.normalise import HANDLED_EVENT_TYPES
from worker.dunning.models import ActionKind, ActionStatus, ScheduledAction
from worker.dunning.scheduler import last_tick
from worker.httpserver import serve_in_thread
from worker.settings import Secret, Settings
from worker.telemetry import event_type_label
from worker.webhooks.inbox import store_event
from worker.webhooks.intake import MAX_BODY, build_intake
from worker.webhooks.models import InboxEvent, InboxStatus
from worker.webhooks.service import process_stored_event

SECRET = "whsec_intake"
DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def sign(body: bytes, *, secret: str = SECRET, at: float | None = None) -> str:
    t = int(at if at is not None else time.time())
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def make_app(database_url: str, broker_url: str, tmp_path: Path) -> DunningCelery:
    return create_app(
        Settings(
            database_url=database_url,
            broker_url=broker_url,
            config_path=REPO / "config" / "dunning.toml",
            stripe_webhook_secret=Secret(SECRET),
            data_dir=tmp_path,
        )
    )


@pytest.fixture
def app(pg: str, redis_url: str, tmp_path: Path) -> Iterator[DunningCelery]:
    celery = make_app(pg, redis_url, tmp_path)
    yield celery
    celery.runtime.close()


@pytest.fixture
def intake(app: DunningCelery) -> Iterator[str]:
    with serve_in_thread(build_intake(app)) as url:
        yield url


def post(url: str, body: bytes, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return httpx.post(f"{url}/webhooks/stripe", content=body, headers=headers, timeout=10)


def event_body(event_id: str = "evt_intake_1") -> bytes:
    return json.dumps(
        ev.envelope(
            "invoice.payment_failed",
            ev.invoice(invoice_id="in_1", at=START),
            at=START,
            event_id=event_id,
        )
    ).encode()


def inbox(app: DunningCelery) -> list[InboxEvent]:
    with app.runtime.session() as session:
        return list(session.scalars(select(InboxEvent).order_by(InboxEvent.id)))


def queued(redis_url: str, queue: str = "intake", *, at_least: int = 1) -> int:
    """Messages in ``queue`` once ``at_least`` arrived (the intake enqueues from a background
    thread after answering) or 2 s passed, and a moment more for any extra one."""
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 2.0
    while int(client.llen(queue)) < at_least and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    return int(client.llen(queue))


def test_a_signed_event_is_stored_and_enqueued_once(
    intake: str, app: DunningCelery, redis_url: str
) -> None:
    body = event_body()
    first = post(intake, body, sign(body))
    assert first.status_code == 200
    assert first.json() == {"received": "evt_intake_1"}
    again = post(intake, body, sign(body))  # Stripe redelivers with a fresh signature
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    (row,) = inbox(app)
    assert row.payload == body.decode()
    assert row.status is InboxStatus.PENDING
    assert queued(redis_url) == 1


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda body: None, "missing Stripe-Signature header"),
        (lambda body: sign(body, secret="whsec_other"), "invalid signature"),
        (lambda body: sign(body + b" "), "invalid signature"),
        (lambda body: sign(body, at=time.time() - 301), "invalid signature"),
        (lambda body: "garbage", "invalid signature"),
    ],
)
def test_bad_signatures_are_400(intake: str, app: DunningCelery, mangle, reason: str) -> None:  # type: ignore[no-untyped-def]
    body = event_body()
    response = post(intake, body, mangle(body))
    assert response.status_code == 400
    assert response.json() == {"error": reason}
    assert inbox(app) == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"type": "invoice.paid"}', "missing event id"),
        (b'{"id": "evt_1"}', "missing event type"),
    ],
)
def test_malformed_events_are_400(
    intake: str, app: DunningCelery, body: bytes, reason: str
) -> None:
    response = post(intake, body, sign(body))
    assert (response.status_code, response.json()) == (400, {"error": reason})
    assert inbox(app) == []


def test_oversized_body_is_413(intake: str, app: DunningCelery) -> None:
    body = b"{" + b" " * MAX_BODY + b"}"
    response = post(intake, body, sign(body))
    assert response.status_code == 413
    assert inbox(app) == []


def test_database_down_is_503_so_stripe_redelivers(redis_url: str, tmp_path: Path) -> None:
    app = make_app("postgresql+psycopg://postgres@127.0.0.1:1/nowhere", redis_url, tmp_path)
    with serve_in_thread(build_intake(app)) as url:
        body = event_body()
        response = post(url, body, sign(body))
        ready = httpx.get(f"{url}/readyz", timeout=10)
    assert response.status_code == 503
    assert ready.status_code == 503
    assert ready.json()["problems"][0].startswith("database: ")


def test_broker_down_loses_nothing(
    pg: str, redis_url: str, tmp_path: Path, manual_clock: clock.ManualClock
) -> None:
    down = make_app(pg, DEAD_REDIS, tmp_path)
    with serve_in_thread(build_intake(down)) as url:
        body = event_body()
        assert post(url, body, sign(body)).status_code == 200
        ready = httpx.get(f"{url}/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["problems"] == ["broker: OperationalError"]
    (row,) = inbox(down)
    assert row.status is InboxStatus.PENDING
    # The broker is back: the sweeper hands the event over once it is a minute old.
    up = make_app(pg, redis_url, tmp_path)
    assert worker.webhooks.tasks.tick_once(up) == 0  # not yet a minute
    manual_clock.advance(timedelta(seconds=61))
    assert worker.webhooks.tasks.tick_once(up) == 1
    assert queued(redis_url) == 1
    with up.runtime.session() as session:  # the heartbeat dunning status shows
        tick = last_tick(session)
        assert tick is not None
        assert (tick.at, tick.claimed, tick.swept) == (manual_clock.now(), 0, 1)
    (row,) = inbox(up)
    assert row.enqueue_count == 2


def test_metrics_show_the_backlog(intake: str) -> None:
    body = event_body()
    post(intake, body, sign(body))
    text = httpx.get(f"{intake}/metrics", timeout=10).text
    assert 'dunning_inbox_events{status="pending"} 1' in text
    assert "# TYPE dunning_cases gauge" in text
    assert "dunning_inbox_oldest_pending_seconds " in text


def test_health_and_readiness(intake: str) -> None:
    assert httpx.get(f"{intake}/healthz", timeout=10).json() == {"status": "ok"}
    ready = httpx.get(f"{intake}/readyz", timeout=10)
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


def test_readiness_and_metrics_say_when_stripe_retries_too(intake: str, app: DunningCelery) -> None:
    """retries.mode = own while an invoice names Stripe's own next attempt: still ready, with
    a warning, and a gauge to alert on."""
    payload = ev.envelope(
        "invoice.payment_failed", ev.invoice(invoice_id="in_1", at=START), at=START
    )
    payload["data"]["object"]["next_payment_attempt"] = int(time.time()) + 86_400
    with app.runtime.session() as session:
        stored = store_event(
            session, provider="stripe", body=json.dumps(payload).encode(), now=START
        )
    assert stored.inbox_id is not None
    process_stored_event(app.runtime, stored.inbox_id)
    ready = httpx.get(f"{intake}/readyz", timeout=10)
    assert ready.status_code == 200
    assert "Smart Retries" in ready.json()["warnings"][0]
    text = httpx.get(f"{intake}/metrics", timeout=10).text
    assert "dunning_provider_retries_planned 1" in text


def test_a_hanging_broker_never_stalls_the_intake(
    pg: str, tmp_path: Path, manual_clock: clock.ManualClock
) -> None:
    """Redis frozen: every delivery is answered as soon as it is durable, concurrently, and
    /readyz says so within a second (issue #10, item 2)."""
    with hanging_port() as port:
        frozen = make_app(pg, f"redis://127.0.0.1:{port}/0", tmp_path)
        with serve_in_thread(build_intake(frozen)) as url:
            bodies = [event_body(f"evt_frozen_{i}") for i in range(30)]
            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=30) as pool:
                answers = list(pool.map(lambda b: post(url, b, sign(b)), bodies))
            took = time.monotonic() - started
            ready_started = time.monotonic()
            ready = httpx.get(f"{url}/readyz", timeout=10)
            ready_took = time.monotonic() - ready_started
        frozen.runtime.close()
    assert [a.status_code for a in answers] == [200] * 30
    assert took < 5, f"30 deliveries took {took:.1f} s"  # each one waited on Redis before
    assert len(inbox(frozen)) == 30  # durable, pending: the sweeper hands them over later
    assert ready.status_code == 503
    assert "broker" in ready.json()["problems"][0]
    assert ready_took < 1.5


def test_a_hanging_database_is_503_within_a_second(redis_url: str, tmp_path: Path) -> None:
    with hanging_port() as port:
        frozen = make_app(f"postgresql+psycopg://postgres@127.0.0.1:{port}/x", redis_url, tmp_path)
        with serve_in_thread(build_intake(frozen)) as url:
            body = event_body()
            started = time.monotonic()
            answer = post(url, body, sign(body))
            took = time.monotonic() - started
            ready_started = time.monotonic()
            ready = httpx.get(f"{url}/readyz", timeout=10)
            ready_took = time.monotonic() - ready_started
        frozen.runtime.close()
    assert (answer.status_code, answer.json()) == (
        503,
        {"error": "database unavailable, retry later"},
    )
    assert took < 1.5
    assert ready.status_code == 503
    assert "database" in ready.json()["problems"][0]
    assert ready_took < 1.5


def _event(event_type: str, obj: dict[str, Any], event_id: str) -> bytes:
    return json.dumps(ev.envelope(event_type, obj, at=START, event_id=event_id)).encode()


def test_intake_requests_are_counted_by_route_and_status(intake: str) -> None:
    """Route templates, never paths: a link token or a customer id is not a label value."""
    before = scrape(intake)
    body = event_body("evt_counted")
    assert post(intake, body, sign(body)).status_code == 200
    assert post(intake, body, sign(body)).status_code == 200  # the duplicate
    assert post(intake, body, "t=1,v1=bad").status_code == 400
    assert httpx.get(f"{intake}/v1/customers/cus_Secret42/access", timeout=10).status_code == 404
    assert httpx.get(f"{intake}/nowhere", timeout=10).status_code == 404
    after = scrape(intake)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    requests = "dunning_intake_requests_total"
    assert moved(requests, route="/webhooks/stripe", status="200") == 2
    assert moved(requests, route="/webhooks/stripe", status="400") == 1
    assert moved(requests, route="/v1/customers/{customer}/access", status="404") == 1
    assert moved(requests, route="unmatched", status="404") == 1
    latency = "dunning_intake_request_duration_seconds_count"
    assert moved(latency, route="/webhooks/stripe") == 3
    assert "cus_Secret42" not in after.text
    assert "nowhere" not in after.text
    # The database gauges are still there, and say the database answered.
    assert after.value("dunning_database_up") == 1
    assert "dunning_inbox_events" in after.names()


def test_finished_events_are_counted_by_type_and_outcome(
    intake: str, app: DunningCelery, manual_clock: clock.ManualClock
) -> None:
    """Signed deliveries over HTTP, then the processing a worker does: processed, failed
    (nothing to collect) and ignored (a type we do not act on)."""
    bodies = [
        event_body("evt_will_process"),
        _event(
            "invoice.payment_failed",
            ev.invoice(invoice_id="in_zero", amount_due=0, at=START),
            "evt_will_fail",
        ),
        _event("product.created", {"id": "prod_1", "object": "product"}, "evt_will_ignore"),
    ]
    for body in bodies:
        assert post(intake, body, sign(body)).status_code == 200
    before = scrape(intake)
    for row in inbox(app):
        process_stored_event(app.runtime, row.id)
    process_stored_event(app.runtime, inbox(app)[0].id)  # a redelivered task: not twice
    after = scrape(intake)

    def moved(**labels: str) -> float:
        name = "dunning_events_processed_total"
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved(type="invoice.payment_failed", outcome="processed") == 1
    assert moved(type="invoice.payment_failed", outcome="failed") == 1
    assert moved(type="other", outcome="ignored") == 1  # types we do not handle: one label
    assert moved() == 3


def test_the_due_backlog_and_the_oldest_overdue_action(
    intake: str, app: DunningCelery, manual_clock: clock.ManualClock
) -> None:
    body = event_body("evt_backlog")
    assert post(intake, body, sign(body)).status_code == 200
    process_stored_event(app.runtime, inbox(app)[0].id)
    with app.runtime.session() as session:
        planned = session.scalars(
            select(ScheduledAction).where(ScheduledAction.status == ActionStatus.PLANNED)
        ).all()
        due_by_kind = Counter(a.kind.value for a in planned if a.due_at <= clock.now())
        last_due = max(a.due_at for a in planned)
    assert planned
    now = scrape(intake)
    for kind in ActionKind:  # every kind has a value, 0 included: a panel is never blank
        assert now.value("dunning_actions_due", kind=kind.value) == due_by_kind[kind.value]

    manual_clock.set(last_due + timedelta(hours=1))  # the workers fell behind
    later = scrape(intake)
    assert later.value("dunning_actions_due") == len(planned)
    oldest = later.value("dunning_actions_oldest_overdue_seconds")
    assert oldest >= timedelta(hours=1).total_seconds()


def test_metrics_answer_while_the_database_is_down(redis_url: str, tmp_path: Path) -> None:
    """The intake's own counts, its 503s among them, are what an outage needs to show."""
    app = make_app("postgresql+psycopg://postgres@127.0.0.1:1/nowhere", redis_url, tmp_path)
    with serve_in_thread(build_intake(app)) as url:
        body = event_body("evt_db_down")
        before = scrape(url)
        assert post(url, body, sign(body)).status_code == 503
        after = scrape(url)
    assert after.value("dunning_database_up") == 0
    assert "dunning_inbox_events" not in after.names()
    name = "dunning_intake_requests_total"
    labels = {"route": "/webhooks/stripe", "status": "503"}
    assert after.value(name, **labels) - before.value(name, **labels) == 1


def test_an_event_type_we_do_not_handle_is_labelled_other() -> None:
    """A signed delivery may carry any type: only those we handle become label values."""
    assert event_type_label("invoice.payment_failed", HANDLED_EVENT_TYPES) == (
        "invoice.payment_failed"
    )
    assert event_type_label("zz.attacker_0001", HANDLED_EVENT_TYPES) == "other"
    assert event_type_label("charge.refunded", HANDLED_EVENT_TYPES) == "other"
