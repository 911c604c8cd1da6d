"""The database schema. Alembic migrations create it; queries use these tables through Core."""

from __future__ import annotations

from datetime import datetime
from typing import cast

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from reckon_server.storage.types import UtcTimestamp


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


orgs = cast(sa.Table, Org.__table__)
principals = cast(sa.Table, PrincipalRow.__table__)
api_keys = cast(sa.Table, ApiKeyRow.__table__)
