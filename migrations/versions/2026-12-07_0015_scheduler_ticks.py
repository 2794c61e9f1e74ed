"""the scheduler's heartbeat, for dunning status

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08 00:10:00.000000

Rule: each migration must run against the previous release's code; split incompatible changes
(drop a column still read, add a NOT NULL without default) across releases.

A new table the previous release never touches.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "scheduler_ticks",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed", sa.Integer(), nullable=False),
        sa.Column("swept", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk__scheduler_ticks")),
    )


def downgrade() -> None:
    op.drop_table("scheduler_ticks")
