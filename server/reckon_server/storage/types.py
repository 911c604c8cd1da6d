"""Column types shared by every table."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from reckon_server.clock import epoch_micros, from_epoch_micros


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


JsonDocument: Any = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
"""Free-form JSON: JSONB on PostgreSQL, JSON text on SQLite."""
