"""artifacts: storage backend; artifact_chunks (artifacts kept in the database)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 05:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("storage", sa.String(length=16), server_default="file", nullable=False)
        )
    op.create_table(
        "artifact_chunks",
        sa.Column("artifact_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["artifact_id"], ["artifacts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("artifact_id", "seq"),
    )


def downgrade() -> None:
    op.drop_table("artifact_chunks")
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.drop_column("storage")
