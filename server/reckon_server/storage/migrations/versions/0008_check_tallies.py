"""Check counts per plan, governed action, purchase type and decision, for audit summaries.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "plan_check_tallies",
        sa.Column("org_id", sa.String(64), primary_key=True),
        sa.Column("plan_id", sa.String(255), primary_key=True),
        sa.Column("governance_context", sa.String(64), primary_key=True),
        sa.Column("purchase_type", sa.SmallInteger, primary_key=True),
        sa.Column("decision", sa.SmallInteger, primary_key=True),
        sa.Column("checks", sa.BigInteger, nullable=False),
        sa.Column("findings", sa.BigInteger, nullable=False),
    )
    op.execute(
        "INSERT INTO plan_check_tallies "
        "(org_id, plan_id, governance_context, purchase_type, decision, checks, findings) "
        "SELECT org_id, plan_id, governance_context, purchase_type, decision, count(*), "
        "coalesce(sum(findings_count), 0) FROM governance_checks "
        "GROUP BY org_id, plan_id, governance_context, purchase_type, decision"
    )


def downgrade() -> None:
    op.drop_table("plan_check_tallies")
