"""the fleet-wide Stripe request budget, for fleets without Redis

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-09 00:10:00.000000

Rule: each migration must run against the previous release's code; split incompatible changes
(drop a column still read, add a NOT NULL without default) across releases.

A new table the previous release never touches; its rows are created on first use.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stripe_budget",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("tokens", sa.Double(), nullable=False),
        sa.Column("refilled_at_s", sa.Double(), nullable=False),
        sa.Column("paused_until_s", sa.Double(), nullable=False),
        sa.Column("granted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk__stripe_budget")),
    )


def downgrade() -> None:
    op.drop_table("stripe_budget")
