"""graded access for the customer's app: the case's access level; app events and their log

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 22:30:00.000000

Rule: each migration must run against the previous release's code; split incompatible changes
(drop a column still read, add a NOT NULL without default) across releases.

A new table and two nullable columns the previous release never reads. The new action kinds
(access_change, notify_app) are plain strings: no DDL, and the previous release never plans
them (it would not run one it finds: deploy workers before the beat).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("dunning_cases") as batch:
        batch.add_column(sa.Column("access", sa.Text(), nullable=True))
        batch.add_column(sa.Column("access_since", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "app_events",
        sa.Column("id", _ID, nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("dedupe_key", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("customer_id", _ID, nullable=False),
        sa.Column("case_id", _ID, nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"], ["dunning_cases.id"], name=op.f("fk__app_events__case_id__dunning_cases")
        ),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk__app_events__customer_id__customers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk__app_events")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq__app_events__dedupe_key")),
        sa.UniqueConstraint("event_id", name=op.f("uq__app_events__event_id")),
    )
    op.create_index(op.f("ix__app_events__case_id"), "app_events", ["case_id"])
    op.create_index(op.f("ix__app_events__customer_id"), "app_events", ["customer_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix__app_events__customer_id"), table_name="app_events")
    op.drop_index(op.f("ix__app_events__case_id"), table_name="app_events")
    op.drop_table("app_events")
    with op.batch_alter_table("dunning_cases") as batch:
        batch.drop_column("access_since")
        batch.drop_column("access")
