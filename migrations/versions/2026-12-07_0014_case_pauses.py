"""when an ops pause began, and how long a case has been paused in all

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 23:50:00.000000

Rule: each migration must run against the previous release's code; split incompatible changes
(drop a column still read, add a NOT NULL without default) across releases.

A nullable column and a NOT NULL one with a server default: the previous release neither reads
nor writes them, and its inserts get the default. Cases paused before the upgrade get the
time their pause began from their transition log.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("dunning_cases") as batch:
        batch.add_column(sa.Column("paused_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("paused_seconds", sa.Integer(), server_default="0", nullable=False)
        )
    # Cases paused now: their pause began at their last move into "paused" (else a resume
    # would take the pause as 0 s long and fire what fell due during it at once).
    op.execute(
        """
        UPDATE dunning_cases SET paused_at = (
            SELECT max(t.at) FROM case_transitions t
            WHERE t.case_id = dunning_cases.id
              AND t.to_state = 'paused' AND t.from_state <> 'paused'
        )
        WHERE state = 'paused'
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("dunning_cases") as batch:
        batch.drop_column("paused_seconds")
        batch.drop_column("paused_at")
