"""when a payment method was detached; the backup-card recovery method

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 22:00:00.000000

Rule: each migration must run against the previous release's code; split incompatible changes
(drop a column still read, add a NOT NULL without default) across releases.

A nullable column the previous release never reads. ``recovery_method`` columns are plain
strings (``native_enum=False``): the new value ``backup_method`` needs no DDL, and the
previous release never writes it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("payment_methods") as batch:
        batch.add_column(sa.Column("detached_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payment_methods") as batch:
        batch.drop_column("detached_at")
