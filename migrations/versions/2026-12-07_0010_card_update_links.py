"""card-update links: one row per email that carries one

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 21:00:00.000000

Rule: each migration must run against the previous release's code; split incompatible changes
(drop a column still read, add a NOT NULL without default) across releases.

A new table the previous release never reads. Links the previous release signed (a token
naming the customer, keyed on STRIPE_WEBHOOK_SECRET) stop working: their pages say so and
point to the invoice's own payment page.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "update_links",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("link_id", sa.Text(), nullable=False),
        sa.Column("issued_for", sa.Text(), nullable=False),
        sa.Column(
            "customer_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "invoice_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_opened_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("open_count", sa.Integer(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name=op.f("fk__update_links__customer_id__customers")
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"], ["invoices.id"], name=op.f("fk__update_links__invoice_id__invoices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk__update_links")),
        sa.UniqueConstraint("issued_for", name=op.f("uq__update_links__issued_for")),
        sa.UniqueConstraint("link_id", name=op.f("uq__update_links__link_id")),
    )
    op.create_index(op.f("ix__update_links__customer_id"), "update_links", ["customer_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix__update_links__customer_id"), table_name="update_links")
    op.drop_table("update_links")
