"""The change bus: a change it cannot send to other replicas still reaches the subscribers of
this one, and does not fail the write that made it."""

from __future__ import annotations

import logging

import pytest

from reckon_server.storage.bus import ChangeBus
from reckon_server.storage.database import Database


async def test_a_change_other_replicas_cannot_get_still_reaches_this_one(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    bus = ChangeBus(database)
    await bus.start()
    heard: list[tuple[str, int]] = []
    bus.subscribe(lambda topic, payload: heard.append((topic, len(payload))))
    try:
        with caplog.at_level(logging.WARNING, "reckon_server.storage.bus"):
            # PostgreSQL refuses a notification of 8,000 bytes or more.
            await bus.publish("plan:org:p", "x" * 9000)
    finally:
        await bus.close()
    assert heard == [("plan:org:p", 9000)]
    if not database.is_sqlite:
        assert "could not publish change 'plan:org:p' to other replicas" in caplog.text
