"""The server's notion of now; domain rules take `now` as an argument instead of reading it."""

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
