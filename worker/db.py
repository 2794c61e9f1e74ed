"""Database plumbing: the declarative Base, engines, sessions, and after-commit work.

Owns: naming conventions, the UTC datetime column type, engine set-up for PostgreSQL and
SQLite, :func:`session_scope` and :func:`enqueue_after_commit`. It owns no tables: those live
in each domain's ``models.py``.

Idempotency rule (STYLE H7), written once here: every side effect has a deterministic key and a
UNIQUE column that proves it happened once. A task first asks "does the row for this effect
exist? then return". Two workers racing on the same effect both pass that check; the loser's
INSERT raises ``IntegrityError``, its transaction rolls back, and the task is retried by
Celery, where the existence check now answers. An IntegrityError is never swallowed.

SQLite note: transactions begin with ``BEGIN IMMEDIATE`` so that writers are serialised from
the first statement. That is our "correct equivalent" of ``SELECT ... FOR UPDATE SKIP LOCKED``:
a claimer holds the write lock for its whole read-then-mark, so no row is claimed twice.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Enum, Integer, MetaData, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix__%(table_name)s__%(column_0_N_name)s",
    "uq": "uq__%(table_name)s__%(column_0_N_name)s",
    "ck": "ck__%(table_name)s__%(constraint_name)s",
    "fk": "fk__%(table_name)s__%(column_0_name)s__%(referred_table_name)s",
    "pk": "pk__%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on PostgreSQL and SQLite alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            msg = "naive datetime given to a UTC column"
            raise ValueError(msg)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Integer primary keys: BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads this class attribute
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        # Enums are stored by value ("past_due"), as plain strings, so adding a member needs
        # no ALTER TYPE migration.
        enum.StrEnum: Enum(
            enum.StrEnum,
            native_enum=False,
            length=32,
            values_callable=lambda e: [m.value for m in e],
        ),
    }


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with the per-dialect settings this worker relies on. SQL parameters (a
    customer's email) never appear in its error messages, which reach logs and error columns."""
    if url.startswith("sqlite"):
        if database := make_url(url).database:  # the default lives in the data directory
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True, **kwargs)
        _configure_sqlite(engine)
        return engine
    # A server that does not answer a connection within seconds is down for our purposes.
    return create_engine(
        url, pool_pre_ping=True, connect_args={"connect_timeout": 3}, hide_parameters=True, **kwargs
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let us emit BEGIN ourselves (pysqlite's implicit BEGIN is DEFERRED).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the lock up front; a read-only transaction takes a WAL snapshot.
        read_only = conn.get_execution_options().get(_READ_ONLY)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


_READ_ONLY = "dunning_read_only"


@contextmanager
def read_only_session(engine: Engine) -> Iterator[Session]:
    """One read-only transaction with a stable snapshot (REPEATABLE READ READ ONLY on
    PostgreSQL, a deferred WAL read on SQLite), always rolled back: reports never write."""
    options: dict[str, Any] = {_READ_ONLY: True}
    if engine.dialect.name == "postgresql":
        options |= {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
    with engine.connect().execution_options(**options) as connection:
        transaction = connection.begin()
        session = Session(bind=connection, expire_on_commit=False)
        try:
            yield session
        finally:
            session.close()
            transaction.rollback()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


_AFTER_COMMIT_KEY = "dunning_after_commit"


def enqueue_after_commit(session: Session, send: Callable[[], object]) -> None:
    """Run ``send`` (typically a Celery ``apply_async``) only once ``session`` has committed."""
    session.info.setdefault(_AFTER_COMMIT_KEY, []).append(send)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    pending = session.info.pop(_AFTER_COMMIT_KEY, [])
    for send in pending:
        send()


@event.listens_for(Session, "after_rollback")
def _drop_after_rollback(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT_KEY, None)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """Commit on success, roll back on error, close always (STYLE H4)."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
