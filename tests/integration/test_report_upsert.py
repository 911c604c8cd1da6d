"""Property: any sequence of reports, in any batch split, ends in last-write-wins with a
gapless history, through the real upsert on SQLite and PostgreSQL."""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reckon_server.domain.audit import ActionRequest, OutcomeReport, OutcomeStatus
from reckon_server.domain.policy import Decision, Evaluation
from reckon_server.domain.principals import Role
from reckon_server.storage import audit as store
from reckon_server.storage import principals as principal_store
from reckon_server.storage.database import Database

reports = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from(list(OutcomeStatus)), st.integers(1, 4)),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sequence=reports)
async def test_last_write_wins_with_gapless_history(
    database: Database, sequence: list[tuple[int, OutcomeStatus, int]]
) -> None:
    now = datetime.now(UTC)
    async with database.write() as conn:
        org_id = await principal_store.ensure_org(conn, "prop-" + uuid.uuid4().hex)
        agent = await principal_store.ensure_principal(conn, org_id, "a", Role.AGENT)
        events = [
            (
                await store.append_event(
                    conn,
                    agent,
                    ActionRequest("x", {}, (), None),
                    Evaluation(Decision.EXECUTED, "p", "1", "r"),
                    now,
                )
            )[0].audit_event_id
            for _ in range(3)
        ]
    # Split the sequence into batches of the drawn sizes, as group commit would.
    items = [
        store.ReportItem(agent, OutcomeReport(events[e], status, f"#{i}", {"i": i}), now)
        for i, (e, status, _) in enumerate(sequence)
    ]
    op, start = store.ReportOutcomes(), 0
    for _, _, size in sequence:
        if start >= len(items):
            break
        chunk = items[start : start + size]
        results = await (await database.send_batch(functools.partial(op.apply, items=chunk)))
        assert all(isinstance(r, store.ReportResult) for r in results)
        start += size

    async with database.read() as conn:
        for index, event in enumerate(events):
            mine = [i for i, (e, _, _) in enumerate(sequence) if e == index]
            record = await store.get_record(conn, org_id, event)
            revisions = await store.history(conn, event)
            if not mine:
                assert record.outcome is None
                continue
            assert record.outcome is not None
            assert record.outcome.revision == len(mine)
            assert record.outcome.message == f"#{mine[-1]}"
            assert [r.revision for r in revisions] == list(range(1, len(mine) + 1))
            assert [r.message for r in revisions] == [f"#{i}" for i in mine]
