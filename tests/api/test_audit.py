"""AuditService end to end on SQLite and PostgreSQL: the outcome-reporting seed and beyond."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import struct_pb2, timestamp_pb2
from grpc import aio

from reckon.v1 import admin_service_pb2, types_pb2
from reckon.v1 import audit_service_pb2 as pb
from reckon_server.domain.principals import Principal
from reckon_server.services import audit as audit_service
from reckon_server.storage.audit import StoredApproval
from reckon_server.storage.database import Database
from tests.support.api import RunningServer, bearer, decode, forged_tokens

Metadata = tuple[tuple[str, str], ...]


def struct(**fields: object) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(fields)
    return message


async def execute(
    api: RunningServer, key: str, action: str = "db.migrate", event_id: str = "", **metadata: object
) -> pb.ExecuteResponse:
    return await api.stubs.audit.Execute(
        pb.ExecuteRequest(action_type=action, metadata=struct(**metadata), event_id=event_id),
        metadata=bearer(key),
    )


async def report(
    api: RunningServer,
    key: str,
    audit_event_id: str,
    status: int = types_pb2.OUTCOME_STATUS_SUCCESS,
    message: str = "",
    **metadata: object,
) -> pb.ReportResponse:
    return await api.stubs.audit.Report(
        pb.ReportRequest(
            audit_event_id=audit_event_id,
            outcome=pb.Outcome(status=status, message=message, metadata=struct(**metadata)),
        ),
        metadata=bearer(key),
    )


async def failure(call: object) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    return raised.value


async def test_seed_lifecycle_execute_then_report_success_then_failure(api: RunningServer) -> None:
    agent = await api.register("deployer")
    executed = await execute(
        api, agent, "db.migrate", "deploy-2026-03-28-migration", migration="0043_add_users_index"
    )
    assert executed.status == pb.EXECUTE_STATUS_EXECUTED
    assert (executed.policy_name, executed.policy_version, executed.rule_name) == (
        "tests",
        "7",
        "databases",
    )
    uuid.UUID(executed.audit_event_id)

    first = await report(
        api,
        agent,
        executed.audit_event_id,
        types_pb2.OUTCOME_STATUS_SUCCESS,
        "Migration applied cleanly",
        rows_affected=14200,
        duration_ms=3420,
    )
    assert (first.created, first.revision, first.status) == (
        True,
        1,
        types_pb2.OUTCOME_STATUS_SUCCESS,
    )
    assert first.reported_at.seconds > 0

    second = await report(
        api,
        agent,
        executed.audit_event_id,
        types_pb2.OUTCOME_STATUS_FAILURE,
        "Migration failed: timeout",
        error_code="MIGRATION_TIMEOUT",
    )
    assert (second.created, second.revision) == (False, 2)
    assert second.reported_at.ToDatetime() >= first.reported_at.ToDatetime()

    got = await api.stubs.audit.GetAuditEvent(
        pb.GetAuditEventRequest(audit_event_id=executed.audit_event_id, include_history=True),
        metadata=bearer(agent),
    )
    assert got.record.event.metadata["migration"] == "0043_add_users_index"
    assert got.record.event.event_id == "deploy-2026-03-28-migration"
    assert got.record.outcome.outcome.status == types_pb2.OUTCOME_STATUS_FAILURE
    assert got.record.outcome.revision == 2
    # The overwrite is not silent: both revisions are kept, oldest first.
    assert [(h.revision, h.outcome.status, h.outcome.message) for h in got.history] == [
        (1, types_pb2.OUTCOME_STATUS_SUCCESS, "Migration applied cleanly"),
        (2, types_pb2.OUTCOME_STATUS_FAILURE, "Migration failed: timeout"),
    ]
    assert got.history[0].outcome.metadata["rows_affected"] == 14200


async def test_partial_outcome_with_list_metadata_and_unicode(api: RunningServer) -> None:
    agent = await api.register("regions")
    event = await execute(api, agent, "tool.deploy")
    message = "2/3 régions déployées ✅ — עברית 🚀"
    reported = await report(
        api,
        agent,
        event.audit_event_id,
        types_pb2.OUTCOME_STATUS_PARTIAL,
        message,
        succeeded_regions=["eu-west", "us-east"],
    )
    assert reported.created
    got = await api.stubs.audit.GetAuditEvent(
        pb.GetAuditEventRequest(audit_event_id=event.audit_event_id), metadata=bearer(agent)
    )
    assert got.record.outcome.outcome.message == message
    assert list(got.record.outcome.outcome.metadata["succeeded_regions"]) == ["eu-west", "us-east"]


async def test_denied_and_policy_not_found_are_recorded_with_their_reasons(
    api: RunningServer,
) -> None:
    agent = await api.register("cleaner")
    denied = await execute(api, agent, "db.delete", target={"rows": 5000, "table": "users"})
    assert denied.status == pb.EXECUTE_STATUS_DENIED
    assert denied.denial_reason == "bulk deletes are not allowed"
    [condition] = denied.conditions_evaluated
    assert (condition.field, condition.operator, condition.matched) == ("target.rows", "gt", True)
    assert condition.actual.number_value == 5000
    assert condition.expected.number_value == 1000

    small = await execute(api, agent, "db.delete", target={"rows": 10})
    assert small.status == pb.EXECUTE_STATUS_EXECUTED  # falls through to "db.*"

    unknown = await execute(api, agent, "payments.send")
    assert unknown.status == pb.EXECUTE_STATUS_POLICY_NOT_FOUND
    assert unknown.policy_name == "tests"
    assert unknown.rule_name == ""


async def test_repeated_event_id_returns_the_original_even_when_concurrent(
    api: RunningServer,
) -> None:
    agent = await api.register("retrier")
    results = await asyncio.gather(
        *(execute(api, agent, "db.migrate", "same-event") for _ in range(20))
    )
    assert len({r.audit_event_id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    again = await execute(api, agent, "db.migrate", "same-event", different="metadata")
    assert again.replayed
    assert again.audit_event_id == results[0].audit_event_id
    listed = await api.stubs.audit.ListAuditEvents(
        pb.ListAuditEventsRequest(), metadata=bearer(agent)
    )
    assert len(listed.records) == 1
    # event_id is scoped to its agent: another agent's identical event_id is a new event.
    other = await api.register("other-retrier")
    assert (await execute(api, other, "db.migrate", "same-event")).audit_event_id != (
        results[0].audit_event_id
    )


INVALID_REPORTS = [
    (
        "missing-id",
        pb.ReportRequest(outcome=pb.Outcome(status=1)),
        "INVALID_AUDIT_EVENT_ID",
        "audit_event_id",
    ),
    (
        "not-a-uuid",
        pb.ReportRequest(audit_event_id="evt_123", outcome=pb.Outcome(status=1)),
        "INVALID_AUDIT_EVENT_ID",
        "audit_event_id",
    ),
    (
        "no-outcome",
        pb.ReportRequest(audit_event_id=str(uuid.uuid4())),
        "INVALID_OUTCOME",
        "outcome",
    ),
    (
        "status-unspecified",
        pb.ReportRequest(audit_event_id=str(uuid.uuid4()), outcome=pb.Outcome(status=0)),
        "INVALID_OUTCOME",
        "outcome.status",
    ),
    (
        "status-unknown-number",
        pb.ReportRequest(audit_event_id=str(uuid.uuid4()), outcome=pb.Outcome(status=99)),  # type: ignore[arg-type]
        "INVALID_OUTCOME",
        "outcome.status",
    ),
    (
        "message-over-4k",
        pb.ReportRequest(
            audit_event_id=str(uuid.uuid4()), outcome=pb.Outcome(status=1, message="é" * 2049)
        ),
        "INVALID_OUTCOME",
        "outcome.message",
    ),
    (
        "metadata-over-64k",
        pb.ReportRequest(
            audit_event_id=str(uuid.uuid4()),
            outcome=pb.Outcome(status=1, metadata=struct(blob="x" * 70_000)),
        ),
        "INVALID_OUTCOME",
        "outcome.metadata",
    ),
]


def _deep(levels: int) -> struct_pb2.Struct:
    document: dict[str, object] = {}
    node = document
    for _ in range(levels - 1):
        node["n"] = {}
        node = node["n"]  # type: ignore[assignment]
    return struct(**document)


INVALID_REPORTS.append(
    (
        "metadata-depth-17",
        pb.ReportRequest(
            audit_event_id=str(uuid.uuid4()), outcome=pb.Outcome(status=1, metadata=_deep(17))
        ),
        "INVALID_OUTCOME",
        "outcome.metadata",
    ),
)


@pytest.mark.parametrize(
    ("request_", "reason", "field"),
    [case[1:] for case in INVALID_REPORTS],
    ids=[case[0] for case in INVALID_REPORTS],
)
async def test_invalid_reports_get_the_seed_reasons_with_field_violations(
    api: RunningServer, request_: pb.ReportRequest, reason: str, field: str
) -> None:
    error = decode(await failure(api.stubs.audit.Report(request_, metadata=bearer(api.admin_key))))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == reason
    assert field in [f for f, _ in error.violations]
    assert error.metadata["field"] == error.violations[0][0]


async def test_metadata_at_the_depth_limit_is_accepted(api: RunningServer) -> None:
    agent = await api.register("deep")
    event = await execute(api, agent, "tool.x")
    request = pb.ReportRequest(
        audit_event_id=event.audit_event_id, outcome=pb.Outcome(status=1, metadata=_deep(16))
    )
    assert (await api.stubs.audit.Report(request, metadata=bearer(agent))).created


async def test_ownership_forbidden_and_other_orgs_not_found(api: RunningServer) -> None:
    owner, colleague = await api.register("owner"), await api.register("colleague")
    stranger = await api.foreign_key("elsewhere", "owner")
    event = await execute(api, owner, "tool.run")

    forbidden = decode(await failure(report(api, colleague, event.audit_event_id)))
    assert (forbidden.code, forbidden.reason) == (grpc.StatusCode.PERMISSION_DENIED, "FORBIDDEN")
    hidden = decode(await failure(report(api, stranger, event.audit_event_id)))
    assert (hidden.code, hidden.reason) == (grpc.StatusCode.NOT_FOUND, "AUDIT_EVENT_NOT_FOUND")
    absent = decode(await failure(report(api, owner, str(uuid.uuid4()))))
    assert (absent.code, absent.reason) == (grpc.StatusCode.NOT_FOUND, "AUDIT_EVENT_NOT_FOUND")
    assert "google.rpc.ResourceInfo" in absent.details

    for key in (colleague, stranger):
        error = await failure(
            api.stubs.audit.GetAuditEvent(
                pb.GetAuditEventRequest(audit_event_id=event.audit_event_id), metadata=bearer(key)
            )
        )
        assert error.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND)
    # Nothing was written by the refused reports.
    got = await api.stubs.audit.GetAuditEvent(
        pb.GetAuditEventRequest(audit_event_id=event.audit_event_id), metadata=bearer(owner)
    )
    assert not got.record.HasField("outcome")
    # An admin reads it, but reporting stays the owner's.
    admin_view = await api.stubs.audit.GetAuditEvent(
        pb.GetAuditEventRequest(audit_event_id=event.audit_event_id), metadata=bearer(api.admin_key)
    )
    assert admin_view.record.event.agent_name == "owner"
    assert decode(await failure(report(api, api.admin_key, event.audit_event_id))).reason == (
        "FORBIDDEN"
    )


async def test_concurrent_reports_keep_one_row_and_gapless_revisions(api: RunningServer) -> None:
    agent = await api.register("hammer")
    event = await execute(api, agent, "tool.spin")
    statuses = [(1, 2, 3)[i % 3] for i in range(60)]
    results = await asyncio.gather(
        *(
            report(api, agent, event.audit_event_id, s, f"attempt {i}")
            for i, s in enumerate(statuses)
        )
    )
    assert sorted(r.revision for r in results) == list(range(1, 61))
    assert sum(r.created for r in results) == 1
    got = await api.stubs.audit.GetAuditEvent(
        pb.GetAuditEventRequest(audit_event_id=event.audit_event_id, include_history=True),
        metadata=bearer(agent),
    )
    assert [h.revision for h in got.history] == list(range(1, 61))
    last = max(results, key=lambda r: r.revision)
    assert got.record.outcome.revision == 60
    assert got.record.outcome.outcome.status == last.status
    database = Database(api.database_url)
    try:
        async with database.read() as conn:
            rows = await conn.scalar(
                sa.text("SELECT count(*) FROM audit_outcomes WHERE audit_event_id = :i"),
                {"i": event.audit_event_id},
            )
    finally:
        await database.dispose()
    assert rows == 1


async def test_approval_times_out_on_the_server(api: RunningServer) -> None:
    agent = await api.register("waiter")
    requested = await execute(api, agent, "review.quick")
    assert requested.status == pb.EXECUTE_STATUS_REQUESTED
    assert requested.approval_id
    states = [
        r.approval.state
        async for r in api.stubs.audit.WatchApproval(
            pb.WatchApprovalRequest(approval_id=requested.approval_id),
            metadata=bearer(agent),
            timeout=10,
        )
    ]
    assert states == [types_pb2.APPROVAL_STATE_PENDING, types_pb2.APPROVAL_STATE_TIMED_OUT]
    late = decode(
        await failure(
            api.stubs.admin.ResolveApproval(
                _resolve(requested.approval_id, approve=True), metadata=bearer(api.admin_key)
            )
        )
    )
    assert (late.code, late.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "APPROVAL_ALREADY_RESOLVED",
    )


def _resolve(
    approval_id: str, *, approve: bool, note: str = ""
) -> admin_service_pb2.ResolveApprovalRequest:
    return admin_service_pb2.ResolveApprovalRequest(
        approval_id=approval_id,
        decision=admin_service_pb2.APPROVAL_DECISION_APPROVE
        if approve
        else admin_service_pb2.APPROVAL_DECISION_DENY,
        note=note,
    )


async def test_a_resolution_while_the_watcher_reads_reaches_it_at_once(
    api: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An approval resolved after the watcher read it PENDING, and before it waits again,
    wakes that wait: the watcher does not sleep until its next poll."""
    monkeypatch.setattr(audit_service, "APPROVAL_POLL_SECONDS", 60.0)
    agent = await api.register("racing")
    requested = await execute(api, agent, "review.slow", change="drop index")
    read_approval = audit_service.AuditLedger.approval
    raced = False

    async def resolved_behind_the_read(
        ledger: audit_service.AuditLedger, principal: Principal, approval_id: str
    ) -> StoredApproval:
        nonlocal raced
        current = await read_approval(ledger, principal, approval_id)
        if not principal.is_admin and not raced:
            raced = True
            await api.stubs.admin.ResolveApproval(
                _resolve(approval_id, approve=False), metadata=bearer(api.admin_key)
            )
        return current

    monkeypatch.setattr(audit_service.AuditLedger, "approval", resolved_behind_the_read)
    watch = api.stubs.audit.WatchApproval(
        pb.WatchApprovalRequest(approval_id=requested.approval_id), metadata=bearer(agent)
    )
    states = [(await asyncio.wait_for(watch.read(), 10)).approval.state for _ in range(2)]
    assert raced
    assert states == [types_pb2.APPROVAL_STATE_PENDING, types_pb2.APPROVAL_STATE_DENIED]


async def test_watch_sees_an_admin_resolve_the_approval(api: RunningServer) -> None:
    agent = await api.register("gated")
    requested = await execute(api, agent, "review.slow", change="drop index")
    watch = api.stubs.audit.WatchApproval(
        pb.WatchApprovalRequest(approval_id=requested.approval_id), metadata=bearer(agent)
    )
    first = await watch.read()
    assert first.approval.state == types_pb2.APPROVAL_STATE_PENDING
    assert first.approval.timeout_at.seconds - first.approval.requested_at.seconds == 3600

    refused = decode(
        await failure(
            api.stubs.admin.ResolveApproval(
                _resolve(requested.approval_id, approve=True), metadata=bearer(agent)
            )
        )
    )
    assert (refused.code, refused.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ADMIN_REQUIRED")

    resolved = await api.stubs.admin.ResolveApproval(
        _resolve(requested.approval_id, approve=True, note="looks safe"),
        metadata=bearer(api.admin_key),
    )
    assert resolved.approval.state == types_pb2.APPROVAL_STATE_APPROVED
    second = await asyncio.wait_for(watch.read(), 5)
    assert second.approval.state == types_pb2.APPROVAL_STATE_APPROVED
    assert (second.approval.reviewer, second.approval.note) == ("admin", "looks safe")
    assert await watch.read() is aio.EOF

    again = decode(
        await failure(
            api.stubs.admin.ResolveApproval(
                _resolve(requested.approval_id, approve=False), metadata=bearer(api.admin_key)
            )
        )
    )
    assert again.reason == "APPROVAL_ALREADY_RESOLVED"
    assert again.metadata["state"] == "APPROVED"
    missing = decode(
        await failure(
            api.stubs.audit.WatchApproval(
                pb.WatchApprovalRequest(approval_id=str(uuid.uuid4())), metadata=bearer(agent)
            ).read()
        )
    )
    assert missing.reason == "APPROVAL_NOT_FOUND"


async def test_list_pages_are_stable_under_concurrent_inserts(api: RunningServer) -> None:
    agent = await api.register("pager")
    created = [(await execute(api, agent, "tool.step", n=i)).audit_event_id for i in range(25)]
    seen: list[str] = []
    token = ""
    while True:
        page = await api.stubs.audit.ListAuditEvents(
            pb.ListAuditEventsRequest(page_size=10, page_token=token), metadata=bearer(agent)
        )
        seen.extend(r.event.audit_event_id for r in page.records)
        # A new event between pages must not shift later pages.
        await execute(api, agent, "tool.step", n=-1)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(created))


async def test_list_filters(api: RunningServer) -> None:
    one, two = await api.register("f-one"), await api.register("f-two")
    a = await execute(api, one, "db.migrate")
    b = await execute(api, one, "db.delete", target={"rows": 10**6})
    c = await execute(api, two, "tool.read")
    await report(api, one, a.audit_event_id, types_pb2.OUTCOME_STATUS_FAILURE)
    await report(api, two, c.audit_event_id, types_pb2.OUTCOME_STATUS_SUCCESS)

    async def ids(key: str, **where: object) -> list[str]:
        page = await api.stubs.audit.ListAuditEvents(
            pb.ListAuditEventsRequest(filter=pb.AuditEventFilter(**where)), metadata=bearer(key)
        )
        return [r.event.audit_event_id for r in page.records]

    admin = api.admin_key
    assert await ids(one) == [b.audit_event_id, a.audit_event_id]  # agents see their own
    assert await ids(admin, agent_name="f-two") == [c.audit_event_id]
    assert await ids(admin, action_type="db.*") == [b.audit_event_id, a.audit_event_id]
    assert await ids(admin, statuses=[pb.EXECUTE_STATUS_DENIED]) == [b.audit_event_id]
    assert await ids(admin, outcome_statuses=[types_pb2.OUTCOME_STATUS_FAILURE]) == [
        a.audit_event_id
    ]
    assert await ids(admin, unreported=True) == [b.audit_event_id]
    assert await ids(
        admin, unreported=True, outcome_statuses=[types_pb2.OUTCOME_STATUS_SUCCESS]
    ) == [c.audit_event_id, b.audit_event_id]
    error = decode(
        await failure(
            api.stubs.audit.ListAuditEvents(
                pb.ListAuditEventsRequest(filter=pb.AuditEventFilter(agent_name="f-two")),
                metadata=bearer(one),
            )
        )
    )
    assert error.reason == "ADMIN_REQUIRED"


async def test_filters_out_of_range_are_invalid_not_internal(api: RunningServer) -> None:
    """The wire carries any Timestamp and any enum number; the database takes neither."""
    agent = await api.register("filters")
    beyond = timestamp_pb2.Timestamp(seconds=253402300800)
    where = pb.AuditEventFilter(
        created_after=timestamp_pb2.Timestamp(nanos=-1),
        created_before=beyond,
        statuses=[pb.EXECUTE_STATUS_DENIED, 2**31 - 1],
        outcome_statuses=[0],
    )
    expected = {
        ("filter.created_after", "is not a valid timestamp"),
        ("filter.created_before", "is not a valid timestamp"),
        ("filter.statuses[1]", f"unknown status {2**31 - 1}"),
        ("filter.outcome_statuses[0]", "unknown status 0"),
    }
    listed = decode(
        await failure(
            api.stubs.audit.ListAuditEvents(
                pb.ListAuditEventsRequest(filter=where), metadata=bearer(agent)
            )
        )
    )
    exported = decode(
        await failure(
            _drain(
                api.stubs.audit.ExportAuditTrail(
                    pb.ExportAuditTrailRequest(filter=where), metadata=bearer(agent)
                )
            )
        )
    )
    for error in (listed, exported):
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
        assert set(error.violations) == expected


async def _drain(responses: AsyncIterator[object]) -> None:
    async for _ in responses:
        pass


async def test_page_tokens_are_bound_to_their_filter(api: RunningServer) -> None:
    agent = await api.register("tokens")
    for _ in range(3):
        await execute(api, agent, "tool.x")
    page = await api.stubs.audit.ListAuditEvents(
        pb.ListAuditEventsRequest(page_size=1), metadata=bearer(agent)
    )
    for bad in (
        pb.ListAuditEventsRequest(
            page_size=1,
            page_token=page.next_page_token,
            filter=pb.AuditEventFilter(action_type="db.*"),
        ),
        pb.ListAuditEventsRequest(page_token="garbage!"),
        pb.ListAuditEventsRequest(page_size=1001),
        *(pb.ListAuditEventsRequest(page_token=t) for t in forged_tokens(page.next_page_token)),
    ):
        error = decode(await failure(api.stubs.audit.ListAuditEvents(bad, metadata=bearer(agent))))
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")


async def test_export_streams_intent_decision_and_latest_outcome(api: RunningServer) -> None:
    agent = await api.register("exporter")
    events = [await execute(api, agent, "db.migrate", n=i) for i in range(7)]
    await report(api, agent, events[2].audit_event_id, types_pb2.OUTCOME_STATUS_SUCCESS)
    await report(api, agent, events[2].audit_event_id, types_pb2.OUTCOME_STATUS_PARTIAL)
    records = [
        r.record
        async for r in api.stubs.audit.ExportAuditTrail(
            pb.ExportAuditTrailRequest(), metadata=bearer(api.admin_key)
        )
    ]
    assert [r.event.audit_event_id for r in records] == [e.audit_event_id for e in events]
    assert records[2].outcome.outcome.status == types_pb2.OUTCOME_STATUS_PARTIAL
    assert records[2].outcome.revision == 2
    assert not records[3].HasField("outcome")
    assert all(r.event.status == pb.EXECUTE_STATUS_EXECUTED for r in records)


async def test_chain_verification_finds_the_first_tampered_event(api: RunningServer) -> None:
    agent = await api.register("chained")
    events = [await execute(api, agent, "tool.x", n=i) for i in range(5)]
    verify = admin_service_pb2.VerifyAuditChainRequest()
    intact = await api.stubs.admin.VerifyAuditChain(verify, metadata=bearer(api.admin_key))
    assert (intact.intact, intact.events_checked) == (True, 5)

    database = Database(api.database_url)
    try:
        async with database.write() as conn:
            await conn.execute(
                sa.text("UPDATE audit_events SET action_type = 'tool.y' WHERE audit_event_id = :i"),
                {"i": events[2].audit_event_id},
            )
    finally:
        await database.dispose()
    broken = await api.stubs.admin.VerifyAuditChain(verify, metadata=bearer(api.admin_key))
    assert not broken.intact
    assert broken.first_broken_event_id == events[2].audit_event_id
    assert broken.events_checked == 3
