"""The Python client against a real server: the seed's lifecycle as its users write it."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import grpc
import pytest

from reckon.v1 import admin_service_pb2, audit_service_pb2, types_pb2
from reckon_client import Reckon, ReckonError, from_micros, to_micros
from tests.support.api import RunningServer, bearer


async def test_execute_work_report_lifecycle(api: RunningServer) -> None:
    key = await api.register("sdk-user")
    async with Reckon(api.target, key) as reckon:
        result = await reckon.execute(
            "db.migrate",
            metadata={"migration": "0043_add_users_index"},
            event_id="deploy-2026-03-28-migration",
        )
        assert result.status == audit_service_pb2.EXECUTE_STATUS_EXECUTED
        created = await reckon.report(
            result.audit_event_id, "success", "Migration applied cleanly", {"rows_affected": 14200}
        )
        assert (created.created, created.revision) == (True, 1)
        retried = await reckon.report(
            result.audit_event_id, "success", "Migration applied cleanly", {"rows_affected": 14200}
        )
        assert (retried.created, retried.revision) == (False, 2)


async def test_errors_are_decoded_into_reckon_error(api: RunningServer) -> None:
    key = await api.register("sdk-errors")
    async with Reckon(api.target, key) as reckon:
        with pytest.raises(ReckonError) as raised:
            await reckon.report("not-a-uuid", "success")
        assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.reason_name == "INVALID_AUDIT_EVENT_ID"
        assert raised.value.violations == [("audit_event_id", "must be a UUID")]
        assert not raised.value.transient
        with pytest.raises(ReckonError) as raised:
            await reckon.report("3f1c1b51-8a61-4b44-9d4b-5c1e8f0b6f52", "done")
        assert raised.value.reason_name == "INVALID_OUTCOME"
    async with Reckon(api.target, "rk_wrong") as reckon:
        with pytest.raises(ReckonError) as raised:
            await reckon.execute("db.migrate")
        assert raised.value.reason_name == "UNAUTHENTICATED"


async def test_gate_waits_for_a_reviewer(api: RunningServer) -> None:
    key = await api.register("sdk-gated")
    async with Reckon(api.target, key) as reckon:
        gate = asyncio.create_task(
            reckon.gate("review.slow", metadata={"why": "prod change"}, wait_seconds=10)
        )
        approval_id = ""
        while not approval_id:
            await asyncio.sleep(0.05)
            listed = await reckon.audit.ListAuditEvents(audit_service_pb2.ListAuditEventsRequest())
            approval_id = listed.records[0].event.approval_id if listed.records else ""
        await api.stubs.admin.ResolveApproval(
            admin_service_pb2.ResolveApprovalRequest(
                approval_id=approval_id, decision=admin_service_pb2.APPROVAL_DECISION_APPROVE
            ),
            metadata=bearer(api.admin_key),
        )
        result = await gate
        assert result.allowed
        assert result.approval_state == types_pb2.APPROVAL_STATE_APPROVED

        timed_out = await reckon.gate("review.quick", wait_seconds=10)
        assert not timed_out.allowed
        assert timed_out.approval_state == types_pb2.APPROVAL_STATE_TIMED_OUT
        denied = await reckon.gate("db.delete", metadata={"target": {"rows": 10**9}})
        assert not denied.allowed
        assert denied.denial_reason == "bulk deletes are not allowed"


@pytest.mark.parametrize(
    ("amount", "micros"),
    [
        ("150000", 150_000_000_000),
        (Decimal("0.000001"), 1),
        (-12, -12_000_000),
        ("9223372036854.775807", 2**63 - 1),
    ],
)
def test_money_is_exact(amount: Decimal | int | str, micros: int) -> None:
    assert to_micros(amount) == micros
    assert from_micros(micros) == Decimal(amount)


@pytest.mark.parametrize("amount", ["1.0000001", "9223372036854.775808", "NaN", "abc", 1.5])
def test_money_refuses_inexact_amounts(amount: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        to_micros(amount)  # type: ignore[arg-type]
