"""enums for decline class, retry mode and recovery method; recovery method on actions

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 06:40:00.000000

Rule: each migration must run against the previous release's code; split incompatible changes
(drop a column still read, add a NOT NULL without default) across releases.

A retry's recovery method used to be read back out of its idempotency key (``:card-update:``,
``:network-update:``); it is now a column, filled here once from those keys. The enum columns
keep the same values, stored as VARCHAR(32) like every other enum (``worker.db``).

Previous-release code runs against it, but retries it plans afterwards carry no recovery
method (read as our retry): stop the old workers before they plan many prompt retries.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DECLINE_CLASS = sa.Enum(
    "soon",
    "funds",
    "soft",
    "needs_customer",
    "hard",
    "stop",
    "fraud",
    name="declineclass",
    native_enum=False,
    length=32,
)
RETRY_MODE = sa.Enum("own", "observe", name="retrymode", native_enum=False, length=32)


def _recovery_method() -> sa.Enum:
    return sa.Enum(
        "retry",
        "card_update",
        "network_update",
        "provider",
        "customer",
        name="recoverymethod",
        native_enum=False,
        length=32,
    )


def upgrade() -> None:
    with op.batch_alter_table("scheduled_actions") as batch:
        batch.add_column(sa.Column("recovery_method", _recovery_method(), nullable=True))
    actions = sa.table(
        "scheduled_actions",
        sa.column("kind", sa.Text()),
        sa.column("idempotency_key", sa.Text()),
        sa.column("recovery_method", sa.Text()),
    )
    key = actions.c.idempotency_key
    op.execute(
        actions.update()
        .where(actions.c.kind == "retry_payment")
        .values(
            recovery_method=sa.case(
                (key.like("%:network-update:%"), "network_update"),
                (key.like("%:card-update:%"), "card_update"),
                else_="retry",
            )
        )
    )
    with op.batch_alter_table("dunning_cases") as batch:
        batch.alter_column(
            "decline_class", existing_type=sa.Text(), type_=DECLINE_CLASS, existing_nullable=True
        )
        batch.alter_column(
            "retries_mode", existing_type=sa.Text(), type_=RETRY_MODE, existing_nullable=False
        )
        batch.alter_column(
            "recovered_method",
            existing_type=sa.Text(),
            type_=_recovery_method(),
            existing_nullable=True,
        )
    with op.batch_alter_table("ledger_movements") as batch:
        batch.alter_column(
            "method", existing_type=sa.Text(), type_=_recovery_method(), existing_nullable=True
        )


def downgrade() -> None:
    with op.batch_alter_table("ledger_movements") as batch:
        batch.alter_column(
            "method", existing_type=_recovery_method(), type_=sa.Text(), existing_nullable=True
        )
    with op.batch_alter_table("dunning_cases") as batch:
        batch.alter_column(
            "recovered_method",
            existing_type=_recovery_method(),
            type_=sa.Text(),
            existing_nullable=True,
        )
        batch.alter_column(
            "retries_mode", existing_type=RETRY_MODE, type_=sa.Text(), existing_nullable=False
        )
        batch.alter_column(
            "decline_class", existing_type=DECLINE_CLASS, type_=sa.Text(), existing_nullable=True
        )
    with op.batch_alter_table("scheduled_actions") as batch:
        batch.drop_column("recovery_method")
