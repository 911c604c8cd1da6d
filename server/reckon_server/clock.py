"""The server's notion of now, and times as integer microseconds since the epoch (how they
are stored and how the hot paths compute with them). Domain rules take `now` as an argument
instead of reading it."""

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_MICROS = 253_402_300_799_999_999
"""The last microsecond a datetime holds (9999-12-31T23:59:59.999999Z)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def epoch_micros(value: datetime) -> int:
    """An aware datetime in microseconds since the epoch."""
    if value.tzinfo is None:
        raise ValueError("a naive datetime has no offset from the epoch")
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_epoch_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)
