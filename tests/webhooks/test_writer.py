"""The intake's inbox writer (group commit) and its connections: deliveries that arrive together
share a transaction, each is answered only once its row committed, one the database refuses
fails alone, no request opens a connection of its own, and a connection the server dropped
costs no delivery (issue #13, item 4)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError

from tests.support.processes import free_port
from tests.webhooks.test_intake import DEAD_REDIS, event_body, inbox, make_app, post, sign
from worker import clock
from worker.db import make_engine
from worker.httpserver import serve_in_thread
from worker.webhooks.inbox import Delivery, Stored, parse_delivery, store_events
from worker.webhooks.intake import build_intake
from worker.webhooks.models import InboxEvent, InboxStatus
from worker.webhooks.writer import InboxWriter


def _delivery(event_id: str) -> Delivery:
    return parse_delivery(event_body(event_id))


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(InboxEvent)) or 0)


@contextmanager
def _inserts(engine: Engine) -> Iterator[list[str]]:
    """The INSERT statements sent to the database while inside."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("INSERT INTO inbox_events"):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


def test_store_events_adds_each_event_once(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            first = store_events(
                conn,
                provider="stripe",
                deliveries=[_delivery("evt_a")],
                now=clock.now(),
            )
        with engine.begin() as conn:
            again = store_events(
                conn,
                provider="stripe",
                deliveries=[_delivery("evt_a"), _delivery("evt_b"), _delivery("evt_b")],
                now=clock.now(),
            )
        assert list(first) == ["evt_a"]
        assert list(again) == ["evt_b"]  # evt_a was stored; evt_b twice adds one row
        assert _count(engine) == 2
        with engine.connect() as conn:
            ids = dict(conn.execute(select(InboxEvent.event_id, InboxEvent.id)).all())
        assert ids == {**first, **again}
    finally:
        engine.dispose()


def _store_all(writer: InboxWriter, deliveries: list[Delivery]) -> list[Stored | BaseException]:
    """All at once from one event loop, as the intake's requests do. The loop runs on a
    thread of its own: a session-wide fixture (the browser) may hold this thread's."""

    async def run() -> list[Stored | BaseException]:
        return await asyncio.gather(*(writer.store(d) for d in deliveries), return_exceptions=True)

    with ThreadPoolExecutor(max_workers=1) as loop_thread:
        return loop_thread.submit(asyncio.run, run()).result()


@pytest.mark.parametrize("database", ["pg", "sqlite_url"])
def test_deliveries_arriving_together_share_a_transaction(
    database: str, request: pytest.FixtureRequest
) -> None:
    engine = make_engine(request.getfixturevalue(database))
    added: list[int] = []
    writer = InboxWriter(engine, provider="stripe", threads=1, after_commit=added.append)
    deliveries = [_delivery(f"evt_together_{i}") for i in range(20)]
    try:
        with _inserts(engine) as statements:
            stored = _store_all(writer, [*deliveries, deliveries[0]])  # and one redelivered
        assert len(statements) < 20  # fewer transactions than deliveries
        assert _count(engine) == 20
    finally:
        engine.dispose()
    assert all(isinstance(s, Stored) for s in stored)
    results = [s for s in stored if isinstance(s, Stored)]
    assert [s.event_id for s in results[:20]] == [d.event_id for d in deliveries]
    assert all(s.inbox_id is not None for s in results[:20])
    assert results[20].inbox_id is None  # the duplicate: answered, no second row
    assert sorted(added) == sorted(s.inbox_id for s in results[:20])  # each sent once


@pytest.fixture
def refuses_poison(pg: str) -> Iterator[str]:
    """The real database refuses the row of ``evt_poison`` (a trigger), as it would refuse
    a value it cannot hold."""
    engine = make_engine(pg)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
                "IF NEW.event_id = 'evt_poison' THEN RAISE EXCEPTION 'refused'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON inbox_events "
                "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
            )
        )
    try:
        yield pg
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER refuse_poison ON inbox_events"))
            conn.execute(text("DROP FUNCTION refuse_poison()"))
        engine.dispose()


def test_a_delivery_the_database_refuses_fails_alone(refuses_poison: str) -> None:
    engine = make_engine(refuses_poison)
    writer = InboxWriter(engine, provider="stripe", threads=1, after_commit=lambda _: None)
    good = [_delivery(f"evt_fine_{i}") for i in range(10)]
    try:
        stored = _store_all(writer, [*good[:5], _delivery("evt_poison"), *good[5:]])
        assert _count(engine) == 10
    finally:
        engine.dispose()
    assert isinstance(stored[5], DBAPIError)  # answered 503: Stripe redelivers it
    assert all(isinstance(s, Stored) and s.inbox_id for s in stored[:5] + stored[6:])


def _terminate_connections(database_url: str) -> int:
    """What a restarted server does to every connection a pool keeps."""
    url = make_url(database_url)
    admin = f"postgresql://{url.username}@{url.host}:{url.port}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (url.database,),
        ).fetchall()
    return len(rows)


def test_a_connection_the_server_dropped_costs_no_delivery(
    pg: str, redis_url: str, tmp_path: Path
) -> None:
    """No ping before each use: the first use of a dropped connection fails, the pool renews
    its connections, and the delivery (or check) runs again on a fresh one."""
    app = make_app(pg, redis_url, tmp_path)
    try:
        with serve_in_thread(build_intake(app)) as url:
            body = event_body("evt_before")
            assert post(url, body, sign(body)).status_code == 200
            assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
            assert _terminate_connections(pg) >= 1
            body = event_body("evt_after")
            answer = post(url, body, sign(body))
            assert (answer.status_code, answer.json()) == (200, {"received": "evt_after"})
            assert _terminate_connections(pg) >= 1
            assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        assert [row.event_id for row in inbox(app)] == ["evt_before", "evt_after"]
    finally:
        app.runtime.close()


def test_requests_never_open_connections_of_their_own(
    pg: str, redis_url: str, tmp_path: Path
) -> None:
    """Under concurrent deliveries the intake uses no more connections than its pool keeps
    (before: a pool of 5 + 10 overflow behind 40 threads opened a connection for about
    one request in ten)."""
    app = make_app(pg, redis_url, tmp_path)
    engine = app.runtime.engine
    connects: list[int] = []
    event.listen(engine, "connect", lambda *_: connects.append(1))
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    bodies = [event_body(f"evt_pool_{i}") for i in range(300)]
    try:
        with serve_in_thread(build_intake(app)) as url:
            with ThreadPoolExecutor(max_workers=32) as pool:
                answers = list(pool.map(lambda b: post(url, b, sign(b)).status_code, bodies))
            # at most one statement a delivery, and nothing but the inbox's INSERT
            assert 1 <= len(statements) <= 300
            assert {s.split(" (", 1)[0] for s in statements} == {"INSERT INTO inbox_events"}
            assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
            assert httpx.get(f"{url}/metrics", timeout=10).status_code == 200
        assert answers == [200] * 300
        assert _count(engine) == 300
        assert 1 <= len(connects) <= engine.pool.size()  # type: ignore[attr-defined]
    finally:
        app.runtime.close()


@contextmanager
def _redis_killed() -> Iterator[str]:
    """A Redis that was up when the intake started and is killed before the deliveries."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while (
            subprocess.run(
                ["redis-cli", "-p", str(port), "ping"], capture_output=True, check=False
            ).stdout.strip()
            != b"PONG"
        ):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("how", ["never up", "killed"])
def test_a_dead_redis_adds_no_wait_to_a_delivery(how: str, pg: str, tmp_path: Path) -> None:
    """Redis gone (nothing on its port, or killed under the running intake): every delivery
    is stored and answered at once; the sweeper hands the events over later."""
    with _redis_killed() as alive:
        broker = DEAD_REDIS if how == "never up" else alive
        app = make_app(pg, broker, tmp_path)
        with serve_in_thread(build_intake(app)) as url:
            warm = event_body("evt_warm")
            assert post(url, warm, sign(warm)).status_code == 200
            if how == "killed":
                time.sleep(0.3)  # its send went through
                subprocess.run(["redis-cli", "-u", alive, "shutdown", "nosave"], check=False)

            bodies = [(b, sign(b)) for b in (event_body(f"evt_dead_{i}") for i in range(60))]
            with httpx.Client(base_url=url, timeout=10) as client:

                def timed(signed: tuple[bytes, str]) -> tuple[int, float]:
                    headers = {"Content-Type": "application/json", "Stripe-Signature": signed[1]}
                    started = time.monotonic()
                    code = client.post("/webhooks/stripe", content=signed[0], headers=headers)
                    return code.status_code, time.monotonic() - started

                with ThreadPoolExecutor(max_workers=8) as pool:
                    answers = list(pool.map(timed, bodies))
    try:
        assert [code for code, _ in answers] == [200] * 60
        # A send that waited on Redis took seconds (its connect timeout, a retry); a busy
        # machine's scheduling takes milliseconds, rarely a few hundred.
        took = sorted(t for _, t in answers)
        assert took[len(took) // 2] < 0.2, f"median {took[len(took) // 2]:.2f} s"
        assert took[-1] < 1.5, f"a delivery took {took[-1]:.2f} s with Redis down"
        rows = [r for r in inbox(app) if r.event_id.startswith("evt_dead_")]
        assert len(rows) == 60
        assert {r.status for r in rows} == {InboxStatus.PENDING}
    finally:
        app.runtime.close()
