"""api_tokens: prefix, scope, repos, expires_at; repositories: enabled; command_audit: source

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 05:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("prefix", sa.String(length=16), server_default="", nullable=False)
        )
        batch_op.add_column(
            sa.Column("scope", sa.String(length=16), server_default="read", nullable=False)
        )
        batch_op.add_column(sa.Column("repos", sa.JSON(), server_default="[]", nullable=False))
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("repositories", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
    with op.batch_alter_table("command_audit", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("source", sa.String(length=32), server_default="comment", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("command_audit", schema=None) as batch_op:
        batch_op.drop_column("source")
    with op.batch_alter_table("repositories", schema=None) as batch_op:
        batch_op.drop_column("enabled")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
        batch_op.drop_column("repos")
        batch_op.drop_column("scope")
        batch_op.drop_column("prefix")
