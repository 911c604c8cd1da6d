"""The database schema. Alembic migrations create it; queries use these tables through Core."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from reckon_server.storage.types import JsonDocument, UtcTimestamp


class Base(DeclarativeBase):
    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Org(Base):
    __tablename__ = "orgs"

    org_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcTimestamp)
    # Head of the org's audit hash chain: appends lock this row, so the chain is linear even
    # with many replicas.
    chain_seq: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    chain_head: Mapped[str] = mapped_column(sa.String(64), server_default="")


class PrincipalRow(Base):
    __tablename__ = "principals"
    __table_args__ = (sa.UniqueConstraint("org_id", "name", name="uq_principals_org_name"),)

    principal_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(sa.ForeignKey("orgs.org_id"))
    name: Mapped[str] = mapped_column(sa.String(128))
    role: Mapped[int] = mapped_column(sa.SmallInteger)
    created_at: Mapped[datetime] = mapped_column(UtcTimestamp)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    principal_id: Mapped[str] = mapped_column(sa.ForeignKey("principals.principal_id"), index=True)
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    prefix: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(UtcTimestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcTimestamp, nullable=True)


class AuditEventRow(Base):
    """An immutable record of intent and decision."""

    __tablename__ = "audit_events"
    __table_args__ = (
        sa.UniqueConstraint("org_id", "chain_seq", name="uq_audit_events_org_seq"),
        sa.Index(
            "uq_audit_events_principal_event_id",
            "principal_id",
            "event_id",
            unique=True,
            sqlite_where=sa.text("event_id IS NOT NULL"),
            postgresql_where=sa.text("event_id IS NOT NULL"),
        ),
    )

    audit_event_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    org_id: Mapped[str] = mapped_column(sa.ForeignKey("orgs.org_id"))
    chain_seq: Mapped[int] = mapped_column(sa.BigInteger)
    principal_id: Mapped[str] = mapped_column(sa.ForeignKey("principals.principal_id"))
    agent_name: Mapped[str] = mapped_column(sa.String(128))
    action_type: Mapped[str] = mapped_column(sa.String(256))
    metadata_json: Mapped[Any] = mapped_column(JsonDocument)
    data_accessed: Mapped[Any] = mapped_column(JsonDocument)
    event_id: Mapped[str | None] = mapped_column(sa.String(256), nullable=True)
    status: Mapped[int] = mapped_column(sa.SmallInteger)
    denial_reason: Mapped[str] = mapped_column(sa.Text)
    policy_name: Mapped[str] = mapped_column(sa.String(256))
    policy_version: Mapped[str] = mapped_column(sa.String(128))
    rule_name: Mapped[str] = mapped_column(sa.String(256))
    conditions: Mapped[Any] = mapped_column(JsonDocument)
    approval_id: Mapped[str | None] = mapped_column(sa.String(36), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcTimestamp)
    chain_hash: Mapped[str] = mapped_column(sa.String(64))


class AuditOutcomeRow(Base):
    """The latest outcome of an audit event (the upsert target)."""

    __tablename__ = "audit_outcomes"

    audit_event_id: Mapped[str] = mapped_column(
        sa.ForeignKey("audit_events.audit_event_id"), primary_key=True
    )
    status: Mapped[int] = mapped_column(sa.SmallInteger)
    message: Mapped[str] = mapped_column(sa.Text)
    metadata_json: Mapped[Any] = mapped_column(JsonDocument)
    reported_at: Mapped[datetime] = mapped_column(UtcTimestamp)
    revision: Mapped[int] = mapped_column(sa.BigInteger)


class AuditOutcomeRevisionRow(Base):
    """Every outcome revision ever reported, append-only, so no overwrite is silent."""

    __tablename__ = "audit_outcome_history"

    audit_event_id: Mapped[str] = mapped_column(
        sa.ForeignKey("audit_events.audit_event_id"), primary_key=True
    )
    revision: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    status: Mapped[int] = mapped_column(sa.SmallInteger)
    message: Mapped[str] = mapped_column(sa.Text)
    metadata_json: Mapped[Any] = mapped_column(JsonDocument)
    reported_at: Mapped[datetime] = mapped_column(UtcTimestamp)


class ApprovalRow(Base):
    __tablename__ = "approvals"

    approval_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    org_id: Mapped[str] = mapped_column(sa.ForeignKey("orgs.org_id"))
    audit_event_id: Mapped[str] = mapped_column(sa.String(36), index=True)
    principal_id: Mapped[str] = mapped_column(sa.ForeignKey("principals.principal_id"))
    agent_name: Mapped[str] = mapped_column(sa.String(128))
    action_type: Mapped[str] = mapped_column(sa.String(256))
    state: Mapped[int] = mapped_column(sa.SmallInteger)
    requested_at: Mapped[datetime] = mapped_column(UtcTimestamp)
    timeout_at: Mapped[datetime] = mapped_column(UtcTimestamp)
    resolved_at: Mapped[datetime | None] = mapped_column(UtcTimestamp, nullable=True)
    reviewer: Mapped[str] = mapped_column(sa.String(128))
    note: Mapped[str] = mapped_column(sa.Text)


class PlanRow(Base):
    """A campaign plan; its row lock serialises every budget-changing operation on it."""

    __tablename__ = "plans"

    org_id: Mapped[str] = mapped_column(sa.ForeignKey("orgs.org_id"), primary_key=True)
    plan_id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    owner_id: Mapped[str] = mapped_column(sa.ForeignKey("principals.principal_id"))
    status: Mapped[int] = mapped_column(sa.SmallInteger)
    version: Mapped[int] = mapped_column(sa.BigInteger)
    currency: Mapped[str] = mapped_column(sa.String(3))
    total_micros: Mapped[int] = mapped_column(sa.BigInteger)
    committed_micros: Mapped[int] = mapped_column(sa.BigInteger)
    document: Mapped[Any] = mapped_column(JsonDocument)
    plan_hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UtcTimestamp)
    updated_at: Mapped[datetime] = mapped_column(UtcTimestamp)
    trail_at: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    """The time (epoch microseconds) of the plan's latest checks and outcomes: see
    `storage.governance.NEXT_TRAIL_AT`."""


class CampaignRow(Base):
    """One governed action of a plan, named by its server-issued governance_context."""

    __tablename__ = "campaigns"
    __table_args__ = (
        sa.ForeignKeyConstraint(["org_id", "plan_id"], ["plans.org_id", "plans.plan_id"]),
        sa.Index("ix_campaigns_plan", "org_id", "plan_id"),
        sa.Index("ix_campaigns_media_buy", "org_id", "plan_id", "media_buy_id"),
    )

    governance_context: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(sa.String(64))
    plan_id: Mapped[str] = mapped_column(sa.String(255))
    purchase_type: Mapped[int] = mapped_column(sa.SmallInteger)
    status: Mapped[int] = mapped_column(sa.SmallInteger)
    media_buy_id: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    seller: Mapped[str | None] = mapped_column(sa.String(1024), nullable=True)
    committed_micros: Mapped[int] = mapped_column(sa.BigInteger)
    settled: Mapped[bool] = mapped_column(sa.Boolean)
    spend_micros: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    """Delivered spend: the sum of its periods, kept current by every delivery write."""
    flight_start: Mapped[datetime | None] = mapped_column(UtcTimestamp, nullable=True)
    flight_end: Mapped[datetime | None] = mapped_column(UtcTimestamp, nullable=True)
    channels: Mapped[Any] = mapped_column(JsonDocument)
    created_at: Mapped[datetime] = mapped_column(UtcTimestamp)
    latest_period_start: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    """The start of its latest stored delivery period (None before the first), kept by every
    delivery write: a report starting later cannot restate a stored period."""


class CheckRow(Base):
    """A governance check; an approved, unexpired, unsettled, unsuperseded one reserves."""

    __tablename__ = "governance_checks"
    __table_args__ = (
        sa.Index("ix_checks_plan", "org_id", "plan_id", "created_at"),
        sa.Index("ix_checks_campaign", "governance_context"),
    )

    check_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(sa.String(64))
    plan_id: Mapped[str] = mapped_column(sa.String(255))
    governance_context: Mapped[str] = mapped_column(sa.String(64))
    principal_id: Mapped[str] = mapped_column(sa.String(64))
    purchase_type: Mapped[int] = mapped_column(sa.SmallInteger)
    phase: Mapped[int] = mapped_column(sa.SmallInteger)
    check_type: Mapped[int] = mapped_column(sa.SmallInteger)
    decision: Mapped[int] = mapped_column(sa.SmallInteger)
    amount_micros: Mapped[int] = mapped_column(sa.BigInteger)
    reserves: Mapped[bool] = mapped_column(sa.Boolean)
    expires_at: Mapped[datetime | None] = mapped_column(UtcTimestamp, nullable=True)
    settled_by: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    superseded: Mapped[bool] = mapped_column(sa.Boolean)
    findings_count: Mapped[int] = mapped_column(sa.Integer)
    request: Mapped[Any] = mapped_column(JsonDocument)
    response: Mapped[Any] = mapped_column(JsonDocument)
    plan_hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UtcTimestamp)


class PlanOutcomeRow(Base):
    """An outcome report (completed, failed or delivery)."""

    __tablename__ = "plan_outcomes"
    __table_args__ = (sa.Index("ix_plan_outcomes_plan", "org_id", "plan_id", "created_at"),)

    outcome_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(sa.String(64))
    plan_id: Mapped[str] = mapped_column(sa.String(255))
    check_id: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    governance_context: Mapped[str] = mapped_column(sa.String(64))
    purchase_type: Mapped[int] = mapped_column(sa.SmallInteger)
    outcome: Mapped[int] = mapped_column(sa.SmallInteger)
    status: Mapped[int] = mapped_column(sa.SmallInteger)
    committed_micros: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    findings_count: Mapped[int] = mapped_column(sa.Integer)
    response: Mapped[Any] = mapped_column(JsonDocument)
    plan_hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UtcTimestamp)


class OutcomeTallyRow(Base):
    """How many outcomes a plan has of one governed action and purchase type, and their
    findings: kept in the transaction of every outcome, so that an audit summary never
    counts a trail that a delivery stream makes millions long."""

    __tablename__ = "plan_outcome_tallies"

    org_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    plan_id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    governance_context: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    purchase_type: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True)
    outcomes: Mapped[int] = mapped_column(sa.BigInteger)
    findings: Mapped[int] = mapped_column(sa.BigInteger)


class CheckTallyRow(Base):
    """How many checks a plan has of one governed action, purchase type and decision, and
    their findings: kept in the transaction of every check (whose decision and findings never
    change), so that an audit summary never counts a plan's checks one by one."""

    __tablename__ = "plan_check_tallies"

    org_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    plan_id: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    governance_context: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    purchase_type: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True)
    decision: Mapped[int] = mapped_column(sa.SmallInteger, primary_key=True)
    checks: Mapped[int] = mapped_column(sa.BigInteger)
    findings: Mapped[int] = mapped_column(sa.BigInteger)


class DeliveryPeriodRow(Base):
    """Absolute delivery totals of one campaign for one reporting period: re-sending a
    period replaces it, so spend is never counted twice.

    Keyed by time first: a live stream's transactions add periods of the same recent hours
    for all of their campaigns, which then go in together at the end of the key's index
    instead of into a leaf of their own per campaign."""

    __tablename__ = "delivery_periods"
    __table_args__ = (sa.PrimaryKeyConstraint("period_start", "governance_context", "period_end"),)

    governance_context: Mapped[str] = mapped_column(sa.String(64))
    period_start: Mapped[int] = mapped_column(sa.BigInteger)
    period_end: Mapped[int] = mapped_column(sa.BigInteger)
    org_id: Mapped[str] = mapped_column(sa.String(64))
    plan_id: Mapped[str] = mapped_column(sa.String(255))
    spend_micros: Mapped[int] = mapped_column(sa.BigInteger)
    impressions: Mapped[int] = mapped_column(sa.BigInteger)
    cpm_micros: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    viewability_rate: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    completion_rate: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    outcome_id: Mapped[str] = mapped_column(sa.String(64))
    updated_at: Mapped[int] = mapped_column(sa.BigInteger)


class DeliveryStreamRow(Base):
    """A producer's delivery stream: the next batch sequence number it has not committed, and
    the generation of the connection that owns it (a newer connection fences older ones)."""

    __tablename__ = "delivery_streams"

    org_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    stream_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    principal_id: Mapped[str] = mapped_column(sa.String(64))
    generation: Mapped[int] = mapped_column(sa.BigInteger)
    next_seq: Mapped[int] = mapped_column(sa.BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UtcTimestamp)


class IdempotencyRow(Base):
    """The stored response of an idempotent mutation, keyed by caller, RPC and key."""

    __tablename__ = "idempotency"

    principal_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    rpc: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(sa.String(64))
    response: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcTimestamp)


orgs = cast(sa.Table, Org.__table__)
principals = cast(sa.Table, PrincipalRow.__table__)
api_keys = cast(sa.Table, ApiKeyRow.__table__)
audit_events = cast(sa.Table, AuditEventRow.__table__)
audit_outcomes = cast(sa.Table, AuditOutcomeRow.__table__)
audit_outcome_history = cast(sa.Table, AuditOutcomeRevisionRow.__table__)
approvals = cast(sa.Table, ApprovalRow.__table__)
plans = cast(sa.Table, PlanRow.__table__)
campaigns = cast(sa.Table, CampaignRow.__table__)
checks = cast(sa.Table, CheckRow.__table__)
plan_outcomes = cast(sa.Table, PlanOutcomeRow.__table__)
delivery_periods = cast(sa.Table, DeliveryPeriodRow.__table__)
outcome_tallies = cast(sa.Table, OutcomeTallyRow.__table__)
check_tallies = cast(sa.Table, CheckTallyRow.__table__)
idempotency = cast(sa.Table, IdempotencyRow.__table__)
delivery_streams = cast(sa.Table, DeliveryStreamRow.__table__)
