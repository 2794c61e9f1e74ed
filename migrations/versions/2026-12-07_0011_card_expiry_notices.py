"""card-expiry notices; the payment method an action is about

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 21:30:00.000000

Rule: each migration must run against the previous release's code; split incompatible changes
(drop a column still read, add a NOT NULL without default) across releases.

A new table and a nullable column (``scheduled_actions.payment_method``: the card a retry
charges or a notice warns of) that the previous release never reads.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "card_expiry_notices",
        sa.Column("id", _ID, nullable=False),
        sa.Column("customer_id", _ID, nullable=False),
        sa.Column("payment_method", sa.Text(), nullable=False),
        sa.Column("expires", sa.Text(), nullable=False),
        sa.Column("first_planned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replaced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("replaced_by", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk__card_expiry_notices__customer_id__customers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk__card_expiry_notices")),
        sa.UniqueConstraint(
            "payment_method", "expires", name=op.f("uq__card_expiry_notices__payment_method_expires")
        ),
    )
    op.create_index(
        op.f("ix__card_expiry_notices__customer_id"), "card_expiry_notices", ["customer_id"]
    )
    with op.batch_alter_table("scheduled_actions") as batch:
        batch.add_column(sa.Column("payment_method", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scheduled_actions") as batch:
        batch.drop_column("payment_method")
    op.drop_index(op.f("ix__card_expiry_notices__customer_id"), table_name="card_expiry_notices")
    op.drop_table("card_expiry_notices")
