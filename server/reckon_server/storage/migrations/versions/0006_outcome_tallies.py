"""Outcome counts per plan, governed action and purchase type, for audit summaries.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "plan_outcome_tallies",
        sa.Column("org_id", sa.String(64), primary_key=True),
        sa.Column("plan_id", sa.String(255), primary_key=True),
        sa.Column("governance_context", sa.String(64), primary_key=True),
        sa.Column("purchase_type", sa.SmallInteger, primary_key=True),
        sa.Column("outcomes", sa.BigInteger, nullable=False),
        sa.Column("findings", sa.BigInteger, nullable=False),
    )
    op.execute(
        "INSERT INTO plan_outcome_tallies "
        "(org_id, plan_id, governance_context, purchase_type, outcomes, findings) "
        "SELECT org_id, plan_id, governance_context, purchase_type, count(*), "
        "coalesce(sum(findings_count), 0) FROM plan_outcomes "
        "GROUP BY org_id, plan_id, governance_context, purchase_type"
    )


def downgrade() -> None:
    op.drop_table("plan_outcome_tallies")
