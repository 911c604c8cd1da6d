"""A running spend total per campaign, so ingest never re-sums a campaign's history.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(
            sa.Column("spend_micros", sa.BigInteger, nullable=False, server_default="0")
        )
    op.execute(
        "UPDATE campaigns SET spend_micros = (SELECT coalesce(sum(spend_micros), 0) "
        "FROM delivery_periods WHERE delivery_periods.governance_context = "
        "campaigns.governance_context)"
    )


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("spend_micros")
