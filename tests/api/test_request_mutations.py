"""Every field of a valid request of every RPC, set to values at and past its edges: the server
may accept or refuse each, but never answer INTERNAL, UNKNOWN or UNAVAILABLE (a fault of its
own, or a request that fails only once the database sees it). Each mutation is one field of
one valid request, so that the call gets past the checks of every other field."""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc import aio

from reckon.v1 import admin_service_pb2 as admin_pb
from reckon.v1 import audit_service_pb2 as audit_pb
from reckon.v1 import delivery_service_pb2 as delivery_pb
from reckon.v1 import governance_service_pb2 as pb
from reckon.v1 import types_pb2
from tests.support.api import RunningServer, bearer
from tests.support.delivery import RawStream
from tests.support.governance import (
    Buyer,
    M,
    plan,
    seed_payload,
    seed_seller_response,
    struct,
    ts,
)

FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}
INT64 = [2**63 - 1, -(2**63), -1, 0, 10**17 + 1]
INT32 = [2**31 - 1, -(2**31), -1]
DOUBLES = [math.nan, math.inf, -math.inf, 1e308, -0.0, -1.0, 5e-324]
TEXT = [
    "",
    "x" * 5000,
    "é" * 300,
    "nul\x00",
    "\u202e\u200b",
    "😀" * 100,
    " ",
    "'; DROP TABLE plans;--",
]


def _deep(levels: int) -> dict[str, Any]:
    document: dict[str, Any] = {"leaf": 1}
    for _ in range(levels):
        document = {"d": document}
    return document


DOCUMENTS = [
    struct({"k": "v" * 70_000}),
    struct(_deep(15)),
    struct({"n": 1e308, "l": [None, True, [], {}], "": ""}),
]
TIMES = [
    ts("9999-12-31T23:59:59Z"),
    ts("0001-01-01T00:00:00Z"),
    timestamp_pb2.Timestamp(seconds=253402300800),
    timestamp_pb2.Timestamp(nanos=-1),
]


def _fields(descriptor: Descriptor, depth: int = 0) -> Iterator[tuple[FieldDescriptor, ...]]:
    """Paths to every field a request can set, nested messages up to three levels deep."""
    for field in descriptor.fields:
        nested = field.message_type
        whole = (
            nested is None
            or nested.full_name.startswith("google.protobuf.")
            or nested.GetOptions().map_entry
            or field.is_repeated
        )
        if whole:
            yield (field,)
        elif depth < 3:
            yield from ((field, *rest) for rest in _fields(nested, depth + 1))


def _values(field: FieldDescriptor) -> list[Any]:
    nested = field.message_type
    if nested is not None:
        if nested.GetOptions().map_entry:
            return [("US", math.nan), ("é" * 300, 1e308), ("", -5.0)]
        return {
            "google.protobuf.Timestamp": TIMES,
            "google.protobuf.Struct": DOCUMENTS,
        }.get(nested.full_name, ["copies"])
    by_type: dict[int, list[Any]] = {
        field.TYPE_INT64: INT64,
        field.TYPE_INT32: INT32,
        field.TYPE_DOUBLE: DOUBLES,
        field.TYPE_FLOAT: DOUBLES,
        field.TYPE_STRING: TEXT,
        field.TYPE_ENUM: [-1, 99, 2**31 - 1],
        field.TYPE_BOOL: [True, False],
    }
    return by_type.get(field.type, [])


def _mutated(base: Message, path: tuple[FieldDescriptor, ...], value: Any) -> Message | None:
    message = type(base)()
    message.CopyFrom(base)
    parent = message
    for field in path[:-1]:
        parent = getattr(parent, field.name)
    field = path[-1]
    target = getattr(parent, field.name)
    nested = field.message_type
    if nested is not None and nested.GetOptions().map_entry:
        key, number = value
        target[key] = number
    elif value == "copies":  # a repeated message: three of its first element, or three empty
        template = target[0] if len(target) else None
        for _ in range(3):
            added = target.add()
            if template is not None:
                added.CopyFrom(template)
    elif isinstance(value, Message):
        if field.is_repeated:
            target.add().CopyFrom(value)
        else:
            target.CopyFrom(value)
    elif field.is_repeated:
        target.extend([value] * 3)
    else:
        try:
            setattr(parent, field.name, value)
        except (TypeError, ValueError):  # out of the field's own range: cannot be sent
            return None
    return message


Metadata = tuple[tuple[str, str], ...]
Fresh = Callable[[], Awaitable[Message]]


async def _outcome(call: Any) -> grpc.StatusCode:
    """The call's status; a server stream's once its first message is in."""
    try:
        if isinstance(call, aio.UnaryStreamCall):
            async for _ in call:
                break
            call.cancel()
        else:
            await call
    except aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def _mutate_all(
    method: Any, metadata: Metadata, base: Message, fresh: Fresh | None = None
) -> list[str]:
    """Faults of `method` called with each mutation of `base` (or of a `fresh()` request each
    time, for requests that can be used once)."""
    faults = []
    for path in _fields(base.DESCRIPTOR):
        for value in _values(path[-1]):
            message = _mutated(await fresh() if fresh else base, path, value)
            if message is None:
                continue
            code = await _outcome(method(message, metadata=metadata, timeout=10))
            if code in FAULTS:
                field = ".".join(f.name for f in path)
                faults.append(f"{type(base).__name__} {field}={str(value)[:40]!r}: {code.name}")
    return faults


async def test_no_request_field_value_makes_the_server_fault(api: RunningServer) -> None:
    key = await api.register("mutations")
    buyer = Buyer(api, key)
    agent, admin = bearer(key), bearer(api.admin_key)
    governance, audit = api.stubs.governance, api.stubs.audit
    await buyer.sync(plan("p", 10_000_000))
    await buyer.commit("p", 1_000, "mb_1")
    sequence = itertools.count(1)

    async def completion() -> Message:
        check = await buyer.check("p", seed_payload(1_000))
        n = next(sequence)
        return pb.ReportPlanOutcomeRequest(
            plan_id="p",
            check_id=check.check_id,
            idempotency_key=f"mutated-outcome-{n:010d}",
            outcome=pb.OUTCOME_TYPE_COMPLETED,
            seller_response=seed_seller_response(1_000, media_buy_id=f"mb_m{n}"),
        )

    async def delivery() -> Message:
        return pb.ReportPlanOutcomeRequest(
            plan_id="p",
            idempotency_key=f"mutated-delivery-{next(sequence):010d}",
            outcome=pb.OUTCOME_TYPE_DELIVERY,
            delivery=types_pb2.DeliveryReport(
                media_buy_id="mb_1",
                reporting_period=types_pb2.ReportingPeriod(
                    start=ts("2026-03-15T00:00:00Z"), end=ts("2026-03-22T00:00:00Z")
                ),
                spend_micros=5 * M,
                impressions=100,
                cpm_micros=50 * M,
            ),
        )

    async def report() -> Message:
        executed = await audit.Execute(
            audit_pb.ExecuteRequest(action_type="tool.read"), metadata=agent
        )
        return audit_pb.ReportRequest(
            audit_event_id=executed.audit_event_id,
            outcome=audit_pb.Outcome(status=1, message="ok", metadata=struct({"rows": 1})),
        )

    cases: list[tuple[Any, Metadata, Message, Fresh | None]] = [
        (
            governance.SyncPlans,
            agent,
            pb.SyncPlansRequest(idempotency_key="mutated-sync-000001", plans=[plan("q", 1_000)]),
            None,
        ),
        (
            governance.CheckGovernance,
            agent,
            pb.CheckGovernanceRequest(
                plan_id="p",
                caller="https://buyer.example",
                tool="create_media_buy",
                payload=struct(seed_payload(1_000)),
            ),
            None,
        ),
        (
            governance.CheckGovernance,
            agent,
            pb.CheckGovernanceRequest(
                plan_id="p",
                caller="https://seller.example",
                planned_delivery=seed_seller_response(1_000).planned_delivery,
            ),
            None,
        ),
        (governance.ReportPlanOutcome, agent, await completion(), completion),
        (governance.ReportPlanOutcome, agent, await delivery(), delivery),
        (governance.GetPlan, agent, pb.GetPlanRequest(plan_id="p"), None),
        (
            governance.GetPlanAuditLogs,
            agent,
            pb.GetPlanAuditLogsRequest(plan_ids=["p"], include_entries=True),
            None,
        ),
        (
            audit.Execute,
            agent,
            audit_pb.ExecuteRequest(
                action_type="db.migrate",
                metadata=struct({"a": 1}),
                data_accessed=["t1"],
                event_id="e-1",
            ),
            None,
        ),
        (audit.Report, agent, await report(), report),
        (
            audit.GetAuditEvent,
            agent,
            audit_pb.GetAuditEventRequest(
                audit_event_id=(await report()).audit_event_id,  # type: ignore[attr-defined]
                include_history=True,
            ),
            None,
        ),
        (
            audit.WatchApproval,
            agent,
            audit_pb.WatchApprovalRequest(approval_id="00000000-0000-0000-0000-000000000000"),
            None,
        ),
        (audit.ListAuditEvents, agent, audit_pb.ListAuditEventsRequest(page_size=10), None),
        (audit.ExportAuditTrail, admin, audit_pb.ExportAuditTrailRequest(), None),
        (api.stubs.delivery.WatchPlan, agent, delivery_pb.WatchPlanRequest(plan_id="p"), None),
        (
            api.stubs.admin.RegisterAgent,
            admin,
            admin_pb.RegisterAgentRequest(name="mutated-agent"),
            None,
        ),
        (api.stubs.admin.ListAgents, admin, admin_pb.ListAgentsRequest(page_size=5), None),
        (
            api.stubs.admin.SetPlanStatus,
            admin,
            admin_pb.SetPlanStatusRequest(
                plan_id="q", status=types_pb2.PLAN_STATUS_ACTIVE, reason="review"
            ),
            None,
        ),
        (
            api.stubs.admin.RevokeKey,
            admin,
            admin_pb.RevokeKeyRequest(key_id="key_that_does_not_exist"),
            None,
        ),
        (
            api.stubs.admin.ResolveApproval,
            admin,
            admin_pb.ResolveApprovalRequest(
                approval_id="00000000-0000-0000-0000-000000000000", decision=1, note="n"
            ),
            None,
        ),
    ]
    faults = []
    for method, metadata, base, fresh in cases:
        faults += await _mutate_all(method, metadata, base, fresh)
    assert faults == []


async def test_no_streamed_report_field_value_makes_the_server_fault(api: RunningServer) -> None:
    """The same for the reports of a delivery stream, many to a batch: a fault would fail
    the batch, or every batch of its transaction."""
    buyer = Buyer(api, await api.register("stream-mutations"))
    await buyer.sync(plan("p", 10_000_000))
    await buyer.commit("p", 1_000, "mb_1")
    base = delivery_pb.PlanDelivery(
        plan_id="p",
        delivery=types_pb2.DeliveryReport(
            media_buy_id="mb_1",
            reporting_period=types_pb2.ReportingPeriod(
                start=ts("2026-03-15T00:00:00Z"), end=ts("2026-03-16T00:00:00Z")
            ),
            spend_micros=5 * M,
            impressions=100,
        ),
    )
    mutated = [
        message
        for path in _fields(base.DESCRIPTOR)
        for value in _values(path[-1])
        if (message := _mutated(base, path, value)) is not None
    ]
    stream = RawStream(api, buyer.key, "mutations-1")
    await stream.opened()
    faults = []
    for seq, first in enumerate(range(0, len(mutated), 50), 1):
        stream.send(seq, mutated[first : first + 50])  # type: ignore[arg-type]
        ack = await stream.ack()
        assert ack.disposition == delivery_pb.BATCH_DISPOSITION_COMMITTED
        faults += [
            (first + i, result.error.message)
            for i, result in enumerate(ack.results)
            if result.error.code in {code.value[0] for code in FAULTS}
        ]
    stream.close()
    assert len(mutated) >= 60
    assert faults == []
