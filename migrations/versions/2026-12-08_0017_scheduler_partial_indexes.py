"""partial indexes for the scheduler tick: planned actions by due time, claims by claim time

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-08 12:00:00.000000

Rule: each migration must run against the previous release's code; split incompatible changes
(drop a column still read, add a NOT NULL without default) across releases.

Two new indexes the previous release's queries may use or ignore. On a large PostgreSQL table
they can be built beforehand with CREATE INDEX CONCURRENTLY under the same names (IF NOT
EXISTS keeps this migration a no-op then).
"""

from collections.abc import Sequence

from alembic import op


revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    ("ix__scheduled_actions__planned_due", "due_at, id", "status = 'planned'"),
    ("ix__scheduled_actions__claimed_at", "claimed_at, id", "status = 'claimed'"),
)


def upgrade() -> None:
    for name, columns, where in INDEXES:
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON scheduled_actions ({columns}) WHERE {where}")


def downgrade() -> None:
    for name, _, _ in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
