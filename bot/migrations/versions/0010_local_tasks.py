"""tasks: what a local task holds besides title and body (labels, priority, an acceptance
checklist, focus paths, a profile, its author and whether it is closed)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("labels", sa.JSON(), server_default="[]", nullable=False))
        batch_op.add_column(sa.Column("priority", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("acceptance", sa.JSON(), server_default="[]", nullable=False))
        batch_op.add_column(sa.Column("focus", sa.JSON(), server_default="[]", nullable=False))
        batch_op.add_column(sa.Column("profile", sa.String(length=128), nullable=True))
        batch_op.add_column(
            sa.Column("author", sa.String(length=255), server_default="", nullable=False)
        )
        batch_op.add_column(
            sa.Column("state", sa.String(length=16), server_default="open", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        for column in ("state", "author", "profile", "focus", "acceptance", "priority", "labels"):
            batch_op.drop_column(column)
