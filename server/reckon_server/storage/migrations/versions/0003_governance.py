"""Campaign governance: plans, campaigns, checks, outcomes, delivery periods, idempotency.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from reckon_server.storage.types import JsonDocument

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("org_id", sa.String(64), sa.ForeignKey("orgs.org_id"), primary_key=True),
        sa.Column("plan_id", sa.String(255), primary_key=True),
        sa.Column(
            "owner_id", sa.String(64), sa.ForeignKey("principals.principal_id"), nullable=False
        ),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("total_micros", sa.BigInteger, nullable=False),
        sa.Column("committed_micros", sa.BigInteger, nullable=False),
        sa.Column("document", JsonDocument, nullable=False),
        sa.Column("plan_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "campaigns",
        sa.Column("governance_context", sa.String(64), primary_key=True),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("plan_id", sa.String(255), nullable=False),
        sa.Column("purchase_type", sa.SmallInteger, nullable=False),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("media_buy_id", sa.String(255), nullable=True),
        sa.Column("seller", sa.String(1024), nullable=True),
        sa.Column("committed_micros", sa.BigInteger, nullable=False),
        sa.Column("settled", sa.Boolean, nullable=False),
        sa.Column("flight_start", sa.BigInteger, nullable=True),
        sa.Column("flight_end", sa.BigInteger, nullable=True),
        sa.Column("channels", JsonDocument, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.ForeignKeyConstraint(["org_id", "plan_id"], ["plans.org_id", "plans.plan_id"]),
    )
    op.create_index("ix_campaigns_plan", "campaigns", ["org_id", "plan_id"])
    op.create_index("ix_campaigns_media_buy", "campaigns", ["org_id", "plan_id", "media_buy_id"])
    op.create_table(
        "governance_checks",
        sa.Column("check_id", sa.String(64), primary_key=True),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("plan_id", sa.String(255), nullable=False),
        sa.Column("governance_context", sa.String(64), nullable=False),
        sa.Column("principal_id", sa.String(64), nullable=False),
        sa.Column("purchase_type", sa.SmallInteger, nullable=False),
        sa.Column("phase", sa.SmallInteger, nullable=False),
        sa.Column("check_type", sa.SmallInteger, nullable=False),
        sa.Column("decision", sa.SmallInteger, nullable=False),
        sa.Column("amount_micros", sa.BigInteger, nullable=False),
        sa.Column("reserves", sa.Boolean, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=True),
        sa.Column("settled_by", sa.String(64), nullable=True),
        sa.Column("superseded", sa.Boolean, nullable=False),
        sa.Column("findings_count", sa.Integer, nullable=False),
        sa.Column("request", JsonDocument, nullable=False),
        sa.Column("response", JsonDocument, nullable=False),
        sa.Column("plan_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_checks_plan", "governance_checks", ["org_id", "plan_id", "created_at"])
    op.create_index("ix_checks_campaign", "governance_checks", ["governance_context"])
    op.create_table(
        "plan_outcomes",
        sa.Column("outcome_id", sa.String(64), primary_key=True),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("plan_id", sa.String(255), nullable=False),
        sa.Column("check_id", sa.String(64), nullable=True),
        sa.Column("governance_context", sa.String(64), nullable=False),
        sa.Column("purchase_type", sa.SmallInteger, nullable=False),
        sa.Column("outcome", sa.SmallInteger, nullable=False),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("committed_micros", sa.BigInteger, nullable=True),
        sa.Column("findings_count", sa.Integer, nullable=False),
        sa.Column("response", JsonDocument, nullable=False),
        sa.Column("plan_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_plan_outcomes_plan", "plan_outcomes", ["org_id", "plan_id", "created_at"])
    op.create_table(
        "delivery_periods",
        sa.Column("governance_context", sa.String(64), primary_key=True),
        sa.Column("period_start", sa.BigInteger, primary_key=True),
        sa.Column("period_end", sa.BigInteger, primary_key=True),
        sa.Column("org_id", sa.String(64), nullable=False),
        sa.Column("plan_id", sa.String(255), nullable=False),
        sa.Column("spend_micros", sa.BigInteger, nullable=False),
        sa.Column("impressions", sa.BigInteger, nullable=False),
        sa.Column("cpm_micros", sa.BigInteger, nullable=True),
        sa.Column("viewability_rate", sa.Float, nullable=True),
        sa.Column("completion_rate", sa.Float, nullable=True),
        sa.Column("outcome_id", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "idempotency",
        sa.Column("principal_id", sa.String(64), primary_key=True),
        sa.Column("rpc", sa.String(64), primary_key=True),
        sa.Column("idempotency_key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "idempotency",
        "delivery_periods",
        "plan_outcomes",
        "governance_checks",
        "campaigns",
        "plans",
    ):
        op.drop_table(table)
