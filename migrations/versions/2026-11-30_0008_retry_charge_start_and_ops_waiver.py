"""a retry's charge start and the ops waiver of our own spacing

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 08:40:00.000000

Rule: each migration must run against the previous release's code; split incompatible changes
(drop a column still read, add a NOT NULL without default) across releases.

``charging_at``: when the check right before the charge let a retry go; every other check on
the same card counts it as an attempt until its result is recorded. ``ops_requested``: ops
asked for this retry now (``dunning cases retry-now``), which waives our own spacing (the
minimum gap, the gap to the provider's retry) but never a network rule. Both are nullable or
defaulted, so previous-release code runs against this schema unchanged.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("scheduled_actions") as batch:
        batch.add_column(sa.Column("charging_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("ops_requested", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("scheduled_actions") as batch:
        batch.drop_column("ops_requested")
        batch.drop_column("charging_at")
