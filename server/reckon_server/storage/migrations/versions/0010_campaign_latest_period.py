"""The start of each campaign's latest stored delivery period.

Streamed ingest reads back only the stored periods a transaction's reports may restate:
those starting no later than their campaign's latest. Periods are keyed by time first, so
reading them by time range instead passed over every other campaign's periods of the range,
which grows with the number of campaigns reporting, not with the transaction.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("latest_period_start", sa.BigInteger, nullable=True))
    # One pass over the periods, grouped: a subquery per campaign would scan them all for each.
    op.execute(
        "UPDATE campaigns SET latest_period_start = latest.period_start"
        " FROM (SELECT governance_context, max(period_start) AS period_start"
        " FROM delivery_periods GROUP BY governance_context) AS latest"
        " WHERE campaigns.governance_context = latest.governance_context"
    )


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("latest_period_start")
