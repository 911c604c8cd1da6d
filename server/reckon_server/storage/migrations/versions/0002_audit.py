"""Audit events with a per-org hash chain, outcomes with history, approvals.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from reckon_server.storage.types import JsonDocument

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orgs") as batch:
        batch.add_column(sa.Column("chain_seq", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("chain_head", sa.String(64), nullable=False, server_default=""))
    op.create_table(
        "audit_events",
        sa.Column("audit_event_id", sa.String(36), primary_key=True),
        sa.Column("org_id", sa.String(64), sa.ForeignKey("orgs.org_id"), nullable=False),
        sa.Column("chain_seq", sa.BigInteger, nullable=False),
        sa.Column(
            "principal_id", sa.String(64), sa.ForeignKey("principals.principal_id"), nullable=False
        ),
        sa.Column("agent_name", sa.String(128), nullable=False),
        sa.Column("action_type", sa.String(256), nullable=False),
        sa.Column("metadata_json", JsonDocument, nullable=False),
        sa.Column("data_accessed", JsonDocument, nullable=False),
        sa.Column("event_id", sa.String(256), nullable=True),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("denial_reason", sa.Text, nullable=False),
        sa.Column("policy_name", sa.String(256), nullable=False),
        sa.Column("policy_version", sa.String(128), nullable=False),
        sa.Column("rule_name", sa.String(256), nullable=False),
        sa.Column("conditions", JsonDocument, nullable=False),
        sa.Column("approval_id", sa.String(36), nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("chain_hash", sa.String(64), nullable=False),
        sa.UniqueConstraint("org_id", "chain_seq", name="uq_audit_events_org_seq"),
    )
    op.create_index(
        "uq_audit_events_principal_event_id",
        "audit_events",
        ["principal_id", "event_id"],
        unique=True,
        sqlite_where=sa.text("event_id IS NOT NULL"),
        postgresql_where=sa.text("event_id IS NOT NULL"),
    )
    op.create_table(
        "audit_outcomes",
        sa.Column(
            "audit_event_id",
            sa.String(36),
            sa.ForeignKey("audit_events.audit_event_id"),
            primary_key=True,
        ),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("metadata_json", JsonDocument, nullable=False),
        sa.Column("reported_at", sa.BigInteger, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "audit_outcome_history",
        sa.Column(
            "audit_event_id",
            sa.String(36),
            sa.ForeignKey("audit_events.audit_event_id"),
            primary_key=True,
        ),
        sa.Column("revision", sa.BigInteger, primary_key=True),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("metadata_json", JsonDocument, nullable=False),
        sa.Column("reported_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "approvals",
        sa.Column("approval_id", sa.String(36), primary_key=True),
        sa.Column("org_id", sa.String(64), sa.ForeignKey("orgs.org_id"), nullable=False),
        sa.Column("audit_event_id", sa.String(36), nullable=False),
        sa.Column(
            "principal_id", sa.String(64), sa.ForeignKey("principals.principal_id"), nullable=False
        ),
        sa.Column("agent_name", sa.String(128), nullable=False),
        sa.Column("action_type", sa.String(256), nullable=False),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("requested_at", sa.BigInteger, nullable=False),
        sa.Column("timeout_at", sa.BigInteger, nullable=False),
        sa.Column("resolved_at", sa.BigInteger, nullable=True),
        sa.Column("reviewer", sa.String(128), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
    )
    op.create_index("ix_approvals_audit_event_id", "approvals", ["audit_event_id"])


def downgrade() -> None:
    op.drop_table("approvals")
    op.drop_table("audit_outcome_history")
    op.drop_table("audit_outcomes")
    op.drop_index("uq_audit_events_principal_event_id", "audit_events")
    op.drop_table("audit_events")
    with op.batch_alter_table("orgs") as batch:
        batch.drop_column("chain_head")
        batch.drop_column("chain_seq")
