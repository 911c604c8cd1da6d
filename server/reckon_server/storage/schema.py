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


orgs = cast(sa.Table, Org.__table__)
principals = cast(sa.Table, PrincipalRow.__table__)
api_keys = cast(sa.Table, ApiKeyRow.__table__)
audit_events = cast(sa.Table, AuditEventRow.__table__)
audit_outcomes = cast(sa.Table, AuditOutcomeRow.__table__)
audit_outcome_history = cast(sa.Table, AuditOutcomeRevisionRow.__table__)
approvals = cast(sa.Table, ApprovalRow.__table__)
