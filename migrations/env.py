"""Alembic environment: the schema's source of truth is the migrations, checked against
``worker.models`` by ``alembic check`` (run in the test suite)."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import text

from worker.db import UTCDateTime, make_engine
from worker.models import Base

config = context.config
target_metadata = Base.metadata


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Migrations must not import our TypeDecorator: render it as its plain SQL type.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations() -> None:
    url = config.get_main_option("sqlalchemy.url") or config.attributes["database_url"]
    connectable = config.attributes.get("connection")
    if connectable is None:
        engine = make_engine(url)
        with engine.connect() as connection:
            _run(connection)
        engine.dispose()
    else:
        _run(connectable)


def _run(connection: Any) -> None:
    if connection.dialect.name == "postgresql":
        # Never queue behind live traffic for long, and serialise concurrent upgrades.
        connection.execute(text("SET lock_timeout = '10s'"))
        connection.execute(text("SET statement_timeout = '5min'"))
        connection.execute(text("SELECT pg_advisory_xact_lock(727274)"))
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch mode rebuilds a table by DROP + RENAME; with foreign keys enforced, dropping a
        # table other rows reference fails. The pragma only takes effect outside a transaction.
        connection.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_item=_render_item,
        compare_type=True,
        compare_server_default=True,
        render_as_batch=sqlite,  # SQLite ALTERs via table copies
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    if connection.in_transaction():
        connection.commit()
    if sqlite:
        raw = connection.connection.dbapi_connection
        problems = raw.execute("PRAGMA foreign_key_check").fetchall()
        raw.execute("PRAGMA foreign_keys=ON")
        if problems:
            raise RuntimeError(f"foreign key violations after migrating: {problems[:5]}")


run_migrations()
