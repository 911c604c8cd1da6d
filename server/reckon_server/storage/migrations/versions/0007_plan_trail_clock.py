"""The time of each plan's latest trail entry, so that its entries' times follow commit order.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("plans") as batch:
        batch.add_column(sa.Column("trail_at", sa.BigInteger, nullable=False, server_default="0"))
    for table in ("governance_checks", "plan_outcomes"):
        latest = (
            f"(SELECT max(created_at) FROM {table} WHERE {table}.org_id = plans.org_id "
            f"AND {table}.plan_id = plans.plan_id)"
        )
        op.execute(f"UPDATE plans SET trail_at = {latest} WHERE {latest} > trail_at")


def downgrade() -> None:
    with op.batch_alter_table("plans") as batch:
        batch.drop_column("trail_at")
