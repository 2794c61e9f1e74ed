"""rejected deliveries; an action's first due time; when an email's hand-off started

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 09:30:00.000000

Rule: each migration must run against the previous release's code; split incompatible changes
(drop a column still read, add a NOT NULL without default) across releases.

A new table and two nullable columns (``scheduled_actions.first_due_at``: when an action put
back by a transient failure was first due; ``notifications.sending_since``: when the current
hand-off of an email started): the previous release never reads or writes them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rejected_deliveries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("excerpt", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk__rejected_deliveries")),
    )
    op.create_index(
        op.f("ix__rejected_deliveries__received_at"), "rejected_deliveries", ["received_at"]
    )
    with op.batch_alter_table("scheduled_actions") as batch:
        batch.add_column(sa.Column("first_due_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("notifications") as batch:
        batch.add_column(sa.Column("sending_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("sending_since")
    with op.batch_alter_table("scheduled_actions") as batch:
        batch.drop_column("first_due_at")
    op.drop_index(op.f("ix__rejected_deliveries__received_at"), table_name="rejected_deliveries")
    op.drop_table("rejected_deliveries")
