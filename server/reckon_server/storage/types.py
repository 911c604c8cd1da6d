"""Column types shared by every table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


class UtcTimestamp(sa.TypeDecorator[datetime]):
    """An aware UTC datetime stored as integer microseconds since the epoch.

    Integers order and compare identically on SQLite and PostgreSQL and never lose precision,
    unlike SQLite's text datetimes.
    """

    impl = sa.BigInteger
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> int | None:
        return None if value is None else epoch_micros(value)

    def process_result_value(self, value: int | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return from_epoch_micros(value)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_micros(value: datetime) -> int:
    """The stored form of a timestamp (for statements that bypass the column type)."""
    if value.tzinfo is None:
        raise ValueError("naive datetimes are not stored")
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_epoch_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


JsonDocument: Any = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
"""Free-form JSON: JSONB on PostgreSQL, JSON text on SQLite."""
