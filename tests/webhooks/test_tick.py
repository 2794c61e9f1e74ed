"""The scheduler tick on a real broker (Redis): everything due handed out in one tick, in
messages of a few actions each, never one action twice, and no more in flight than the bound.
"""

from __future__ import annotations

import base64
import json
import math
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import event, insert, select, update

from tests.support.paths import REPO, START
from worker import clock
from worker.app import QUEUES, ROUTES, DunningCelery, create_app
from worker.billing.models import Customer
from worker.db import make_engine, make_sessionmaker
from worker.dunning.models import ActionKind, ActionStatus, ScheduledAction
from worker.dunning.scheduler import BATCH, RECLAIM_AFTER, Claimed
from worker.dunning.tasks import PER_MESSAGE, SPREAD, TASK_FOR, messages
from worker.settings import Settings
from worker.webhooks.tasks import tick_once

KINDS = (ActionKind.RETRY_PAYMENT, ActionKind.SEND_EMAIL, ActionKind.FINAL_ACTION)
NOW = START + timedelta(hours=1)


def _app(db_url: str, redis_url: str, tmp_path: Path) -> DunningCelery:
    return create_app(
        Settings(
            database_url=db_url,
            broker_url=redis_url,
            config_path=REPO / "config" / "dunning.toml",
            data_dir=tmp_path,
        )
    )


def _seed(db_url: str, due: int, *, not_due: int = 100) -> list[int]:
    """``due`` actions due within the hour before NOW (kinds in turn), ``not_due`` due
    tomorrow; the ids of the due ones."""
    engine = make_engine(db_url)
    with make_sessionmaker(engine).begin() as session:
        customer = Customer(provider_id="cus_tick", updated_at=START)
        session.add(customer)
        session.flush()
        rows: list[dict[str, Any]] = [
            {
                "customer_id": customer.id,
                "kind": KINDS[i % len(KINDS)],
                "due_at": START + timedelta(seconds=i % 3600),
                "status": ActionStatus.PLANNED,
                "idempotency_key": f"due:{i}",
                "reason": "test",
                "created_at": START,
            }
            for i in range(due)
        ] + [
            {
                "customer_id": customer.id,
                "kind": ActionKind.RETRY_PAYMENT,
                "due_at": NOW + timedelta(days=1),
                "status": ActionStatus.PLANNED,
                "idempotency_key": f"later:{i}",
                "reason": "test",
                "created_at": START,
            }
            for i in range(not_due)
        ]
        session.execute(insert(ScheduledAction), rows)
        ids = list(
            session.scalars(
                select(ScheduledAction.id).where(ScheduledAction.idempotency_key.like("due:%"))
            )
        )
    engine.dispose()
    return ids


def _queued(redis_url: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Every message waiting in our queues: (queue, task name, kwargs)."""
    broker = redis.Redis.from_url(redis_url)
    found = []
    for queue in QUEUES:
        for raw in broker.lrange(queue, 0, -1):
            message = json.loads(raw)
            _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            found.append((queue, message["headers"]["task"], kwargs))
    return found


def _handed_out(redis_url: str) -> Counter[int]:
    return Counter(i for _, _, kwargs in _queued(redis_url) for i in kwargs["action_ids"])


@contextmanager
def _statements(app: DunningCelery) -> Iterator[list[str]]:
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not statement.startswith("BEGIN"):  # SQLite's BEGIN IMMEDIATE (worker.db)
            seen.append(statement)

    event.listen(app.runtime.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(app.runtime.engine, "before_cursor_execute", note)


def test_one_tick_hands_out_everything_due_a_few_actions_per_message(
    db_url: str, redis_url: str, tmp_path: Path
) -> None:
    due = _seed(db_url, 2 * BATCH + 500)
    app = _app(db_url, redis_url, tmp_path)
    with clock.use_clock(clock.ManualClock(NOW)), _statements(app) as statements:
        assert tick_once(app) == len(due)  # one tick, not one per 500 (issue #13)
    batches = math.ceil(len(due) / BATCH)
    # Per batch: lost claims, planned claims, marking them, the heartbeat; once: in flight,
    # the inbox sweep.
    assert len(statements) <= 4 * batches + 2
    queued = _queued(redis_url)
    assert _handed_out(redis_url) == Counter(due)  # each due action once, nothing else
    kind_of = {name: kind for kind, name in TASK_FOR.items()}
    with app.runtime.session() as session:
        kinds = {
            row.id: row.kind
            for row in session.execute(
                select(ScheduledAction.id, ScheduledAction.kind).where(ScheduledAction.id.in_(due))
            )
        }
    for queue, name, kwargs in queued:
        assert queue == ROUTES[name]["queue"]
        assert 1 <= len(kwargs["action_ids"]) <= PER_MESSAGE
        assert {kinds[i] for i in kwargs["action_ids"]} == {kind_of[name]}
    # A batch's 333 actions of a kind go in ceil(333 / 16) = 21 messages of up to 16.
    assert len(queued) <= len(due) / 10
    with app.runtime.session() as session:
        rows = session.execute(
            select(ScheduledAction.status, ScheduledAction.claims).where(
                ScheduledAction.id.in_(due)
            )
        ).all()
    assert {tuple(row) for row in rows} == {(ActionStatus.CLAIMED, 1)}
    app.runtime.close()


def test_an_empty_tick_is_a_handful_of_statements(
    db_url: str, redis_url: str, tmp_path: Path
) -> None:
    _seed(db_url, 0)
    app = _app(db_url, redis_url, tmp_path)
    with clock.use_clock(clock.ManualClock(NOW)), _statements(app) as statements:
        assert tick_once(app) == 0
    # in flight, lost claims, planned claims, inbox sweep, heartbeat
    assert len(statements) <= 5
    assert _queued(redis_url) == []
    app.runtime.close()


def test_messages_carry_up_to_per_message_actions_of_one_kind_spread_when_few() -> None:
    def claimed(kind: ActionKind, n: int, first: int = 0) -> list[Claimed]:
        return [Claimed(first + i, kind) for i in range(n)]

    assert messages(claimed(ActionKind.SEND_EMAIL, 3)) == [
        ("dunning.send_email", [0]),
        ("dunning.send_email", [1]),
        ("dunning.send_email", [2]),
    ]
    many = messages(claimed(ActionKind.RETRY_PAYMENT, 1_000))
    assert [len(ids) for _, ids in many] == [PER_MESSAGE] * (1_000 // PER_MESSAGE)
    mixed = messages(
        claimed(ActionKind.RETRY_PAYMENT, SPREAD * 2) + claimed(ActionKind.NOTIFY_APP, 5, first=100)
    )
    assert mixed == [("dunning.retry_payment", [2 * i, 2 * i + 1]) for i in range(SPREAD)] + [
        ("dunning.notify_app", [100 + i]) for i in range(5)
    ]


def test_a_few_due_actions_go_one_per_message(db_url: str, redis_url: str, tmp_path: Path) -> None:
    """Idle worker processes share a handful of due charges instead of one taking all."""
    due = _seed(db_url, 12)
    app = _app(db_url, redis_url, tmp_path)
    with clock.use_clock(clock.ManualClock(NOW)):
        assert tick_once(app) == 12
    assert sorted(len(kwargs["action_ids"]) for _, _, kwargs in _queued(redis_url)) == [1] * 12
    assert _handed_out(redis_url) == Counter(due)
    app.runtime.close()


def test_two_ticks_at_once_hand_out_each_due_action_once(
    db_url: str, redis_url: str, tmp_path: Path
) -> None:
    """Two beats on two hosts: two apps with their own connection pools tick at the same
    moment, each claiming batch after batch."""
    due = _seed(db_url, 5 * BATCH)
    apps = [_app(db_url, redis_url, tmp_path / f"beat{i}") for i in range(2)]
    counts = [0, 0]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def beat(slot: int) -> None:
        start.wait()
        try:
            counts[slot] = tick_once(apps[slot])
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    with clock.use_clock(clock.ManualClock(NOW)):
        threads = [threading.Thread(target=beat, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert errors == []
    assert sum(counts) == len(due)
    assert _handed_out(redis_url) == Counter(due)  # no action in two messages
    if "postgresql" in db_url:  # SKIP LOCKED: both claimed at the same time
        assert min(counts) > 0
    with apps[0].runtime.session() as session:
        claims = set(
            session.scalars(select(ScheduledAction.claims).where(ScheduledAction.id.in_(due)))
        )
    assert claims == {1}
    for app in apps:
        app.runtime.close()


def test_a_burst_waits_in_the_table_beyond_the_in_flight_bound(
    db_url: str, redis_url: str, tmp_path: Path
) -> None:
    """Back-pressure: no more than the bound is claimed and unfinished at a time, so nothing
    waits in the broker until it is handed out a second time."""
    due = _seed(db_url, 2_500)
    app = _app(db_url, redis_url, tmp_path)
    bound = 1_000
    with clock.use_clock(clock.ManualClock(NOW)) as manual:
        assert isinstance(manual, clock.ManualClock)
        assert tick_once(app, max_in_flight=bound) == bound
        assert tick_once(app, max_in_flight=bound) == 0  # full: the rest waits
        with app.runtime.session() as session:  # workers finish 400
            session.execute(
                update(ScheduledAction)
                .where(ScheduledAction.id.in_(sorted(_handed_out(redis_url))[:400]))
                .values(status=ActionStatus.DONE)
            )
        assert tick_once(app, max_in_flight=bound) == 400
        assert len(_handed_out(redis_url)) == 1_400
        # The 1,000 in flight are lost (nobody finished them): they no longer count, and are
        # handed out again before anything still planned.
        manual.advance(RECLAIM_AFTER + timedelta(seconds=1))
        assert tick_once(app, max_in_flight=bound) == bound
    handed = _handed_out(redis_url)
    assert set(handed) <= set(due)
    assert len(handed) == 1_400
    assert sum(1 for n in handed.values() if n == 2) == 1_000  # the lost ones, again
    with app.runtime.session() as session:
        planned = session.scalar(
            select(ScheduledAction.id)
            .where(ScheduledAction.id.in_(due), ScheduledAction.status == ActionStatus.PLANNED)
            .limit(1)
        )
    assert planned is not None  # the rest still waits in the table
    app.runtime.close()
