"""Outcome ids: the same shape as before, unique, and ordered by the time they were made."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from reckon_server.storage.delivery import outcome_ids


def test_ids_are_unique_well_formed_and_grow_with_time() -> None:
    start = datetime(2026, 3, 15, tzinfo=UTC)
    earlier = outcome_ids(start, 5000)
    later = outcome_ids(start + timedelta(milliseconds=1), 5000)
    assert all(re.fullmatch(r"out_[0-9a-f]{24}", i) for i in earlier + later)
    assert len(set(earlier + later)) == 10_000
    assert max(earlier) < min(later)
    assert outcome_ids(start, 0) == []
