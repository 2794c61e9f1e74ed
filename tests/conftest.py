"""Shared fixtures: real PostgreSQL, Redis and SQLite, schema from ``alembic upgrade head``.

Tests that run a Celery worker thread cannot share one rolled-back transaction with it, so the
PostgreSQL database is created once per session and every table is truncated before each test
that uses it. Redis uses database 15, flushed before each test that uses it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from playwright.sync_api import Browser, sync_playwright
from sqlalchemy import text
from sqlalchemy.orm import Session

from tests.support.paths import REPO, START
from worker import clock
from worker.config import Policy, load_policy
from worker.db import make_engine, make_sessionmaker
from worker.migrate import upgrade
from worker.models import Base

PG_HOST = os.environ.get("DUNNING_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("DUNNING_TEST_REDIS", "redis://127.0.0.1:6379/15")


def _admin() -> psycopg.Connection:
    return psycopg.connect(f"{PG_HOST}/postgres", autocommit=True)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    name = f"dunning_test_{os.getpid()}"
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_HOST.replace('postgresql://', 'postgresql+psycopg://')}/{name}"
    upgrade(url)
    yield url
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg(pg_url: str) -> Iterator[str]:
    """The session's PostgreSQL database, emptied before the test."""
    engine = make_engine(pg_url)
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return pg_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'dunning.db'}"
    upgrade(url)
    return url


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Run the test on both supported databases."""
    fixture = "pg" if request.param == "postgresql" else "sqlite_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    with factory() as s:
        yield s
        s.rollback()
    engine.dispose()


@pytest.fixture
def redis_url() -> str:
    redis.Redis.from_url(REDIS_URL).flushdb()
    return REDIS_URL


@pytest.fixture
def policy() -> Policy:
    return load_policy(REPO / "config" / "dunning.toml")


@pytest.fixture
def manual_clock() -> Iterator[clock.ManualClock]:
    with clock.use_clock(clock.ManualClock(START)) as installed:
        assert isinstance(installed, clock.ManualClock)
        yield installed


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium (``make browser``) through Playwright: Playwright's own
    browser download is not reachable from CI."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail(
            "chromium is not installed (not on PATH): run `make browser`, which installs "
            "Debian's chromium package (scripts/browser). This test must run, not skip."
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()
