"""DeliveryService: the StreamDelivery protocol and WatchPlan."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from google.protobuf import duration_pb2
from grpc import aio

from reckon.v1 import delivery_service_pb2 as pb
from reckon.v1 import delivery_service_pb2_grpc
from reckon_server.clock import utcnow
from reckon_server.domain.principals import Principal
from reckon_server.errors import FieldViolation, Reason, ReckonError, invalid
from reckon_server.services.delivery import DeliveryLedger, OpenLimit
from reckon_server.services.notify import Subscription
from reckon_server.storage.delivery import (
    BatchApplied,
    StreamBatch,
    fenced,
    sequence_gap,
)
from reckon_server.transport.codec import to_timestamp
from reckon_server.transport.context import current_principal
from reckon_server.transport.governance_codec import (
    encode_plan_state,
    encode_stored_finding,
    terms_from_document,
)
from reckon_server.transport.status import rich_status
from reckon_server.transport.stream_reports import batch_reports, fill_results

Context = aio.ServicerContext[Any, Any]
_STREAM_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_END = object()


class DeliveryServicer(delivery_service_pb2_grpc.DeliveryServiceServicer):
    def __init__(
        self,
        ledger: DeliveryLedger,
        *,
        heartbeat_seconds: float,
        watch_backlog: int,
        max_watchers: int,
    ) -> None:
        self._ledger = ledger
        self._heartbeat = heartbeat_seconds
        self._watch_backlog = watch_backlog
        self._watchers = OpenLimit("plan watchers", max_watchers)

    async def StreamDelivery(
        self, request_iterator: AsyncIterator[pb.StreamDeliveryRequest], context: Context
    ) -> AsyncIterator[pb.StreamDeliveryResponse]:
        principal = current_principal()
        limits = self._ledger.limits
        try:
            async with asyncio.timeout(limits.idle_seconds):
                first = await anext(request_iterator)
        except (StopAsyncIteration, TimeoutError):
            return
        if not first.HasField("open") or not _STREAM_ID.match(first.open.stream_id):
            raise invalid(
                Reason.INVALID_REQUEST,
                [
                    FieldViolation(
                        "open.stream_id",
                        "the first message opens the stream: 1..128 letters, digits, '_.:-'",
                    )
                ],
            )
        stream_id = first.open.stream_id
        generation, next_seq, fence = await self._ledger.open(principal, stream_id)
        acks: asyncio.Queue[Any] = asyncio.Queue(maxsize=limits.window)
        reader = asyncio.create_task(
            self._read(
                requests=request_iterator,
                acks=acks,
                principal=principal,
                stream_id=stream_id,
                generation=generation,
                next_seq=next_seq,
            )
        )
        try:
            yield pb.StreamDeliveryResponse(
                opened=pb.StreamOpened(
                    stream_id=stream_id,
                    next_seq=next_seq,
                    max_batch_reports=limits.max_batch_reports,
                    max_inflight_batches=limits.window,
                )
            )
            while True:
                # A queued ack comes first, as `_first_of` would also have it, without the
                # three tasks that it starts and cancels for every ack.
                item = (
                    acks.get_nowait()
                    if not acks.empty()
                    else await _first_of(acks.get(), fence.wait(), self._ledger.draining.wait())
                )
                if item is _FENCED:
                    raise fenced(stream_id)
                if item is _DRAINING:
                    reader.cancel()
                    async for ack in _drain(acks):
                        yield ack
                    raise self._ledger.draining_error()
                if item is _END:
                    # Re-raises what ended the reading (undecodable bytes are INVALID_BODY),
                    # after the acks of every batch read before it.
                    await reader
                    break
                # Shielded: a stream cancelled while it waits must not cancel the commit.
                yield await asyncio.shield(item)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            # Acks nobody will read are left to run: their batches commit or fail with their
            # transactions and hold their room in the server until then, so that producers
            # that keep going away and coming back cannot pile batches up in the group commit.
            self._ledger.release(principal, stream_id, generation)

    async def _read(
        self,
        *,
        requests: AsyncIterator[pb.StreamDeliveryRequest],
        acks: asyncio.Queue[Any],
        principal: Principal,
        stream_id: str,
        generation: int,
        next_seq: int,
    ) -> None:
        """Read batches while the window has room (a full window stops reading, and HTTP/2
        flow control pushes back on the producer), submitting each in order."""
        expected = next_seq
        limits = self._ledger.limits
        try:
            while True:
                # Not wait_for: on Python 3.11 it swallows a cancel that lands as the message
                # arrives, and the stream that cancelled its reader would wait on it for good.
                try:
                    async with asyncio.timeout(limits.idle_seconds):
                        message = await anext(requests)
                except (StopAsyncIteration, TimeoutError):
                    break
                batch = message.batch
                if not message.HasField("batch"):
                    await acks.put(
                        _failed(
                            invalid(
                                Reason.INVALID_REQUEST,
                                [
                                    FieldViolation(
                                        "open",
                                        "a stream is opened once; later messages are batches",
                                    )
                                ],
                            )
                        )
                    )
                    break
                if 1 <= batch.seq < expected:
                    await acks.put(
                        _ready(
                            pb.BatchAck(
                                seq=batch.seq,
                                disposition=pb.BATCH_DISPOSITION_DUPLICATE,
                                next_seq=expected,
                            )
                        )
                    )
                    continue
                error = _rejection(batch, expected, limits.max_batch_reports)
                if error is not None:
                    rejected = pb.BatchAck(
                        seq=batch.seq,
                        disposition=pb.BATCH_DISPOSITION_REJECTED,
                        next_seq=expected,
                    )
                    rejected.error.CopyFrom(rich_status(error))
                    await acks.put(_ready(rejected))
                    continue
                stream_batch = StreamBatch(
                    principal.org_id,
                    principal.principal_id,
                    stream_id,
                    generation,
                    batch.seq,
                    batch_reports(batch),
                    utcnow(),
                )
                expected += 1
                admitted = asyncio.get_running_loop().create_future()
                pending = asyncio.ensure_future(
                    _committed(self._ledger.commit(stream_batch, admitted), batch.seq, expected)
                )
                # A stream that ends early never awaits its last acks; their failures are
                # expected then, not "never retrieved".
                pending.add_done_callback(_observe)
                await acks.put(pending)
                # Reading on while the server has no room would hold every stream's window
                # of decoded batches in memory at once.
                await asyncio.wait((admitted, pending), return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Only the response loop cancels its reader, once it takes no more acks: waiting
            # for room for _END then would hold the call, and its stream, open for good.
            reading = asyncio.current_task()
            if reading is None or not reading.cancelling():
                await acks.put(_END)

    async def WatchPlan(
        self, request: pb.WatchPlanRequest, context: Context
    ) -> AsyncIterator[pb.WatchPlanResponse]:
        principal = current_principal()
        if not request.plan_id:
            raise invalid(Reason.INVALID_REQUEST, [FieldViolation("plan_id", "required")])
        # Each watcher reads its plan's changes from storage whenever the plan changes.
        self._watchers.enter()
        try:
            with self._ledger.plan_changes(principal, request.plan_id) as changed:
                async for response in self._watch(principal, request, changed):
                    yield response
        finally:
            self._watchers.leave()

    async def _watch(
        self, principal: Principal, request: pb.WatchPlanRequest, changed: Subscription
    ) -> AsyncIterator[pb.WatchPlanResponse]:
        """The snapshot, then the events of every change `changed` reports from then on (it
        was subscribed before the snapshot is read, so no change falls in between)."""
        governance = self._ledger.governance
        # Read before the snapshot: entries after it are those the snapshot may not hold (an
        # entry that commits in between is in both, never in neither).
        watermark = await self._ledger.trail_end(principal, request.plan_id)
        view = await governance.plan_view(principal, request.plan_id)
        terms = terms_from_document(view.plan.document)
        started = utcnow()
        yield pb.WatchPlanResponse(
            event=pb.PlanEvent(
                type=pb.PLAN_EVENT_TYPE_SNAPSHOT,
                plan_id=request.plan_id,
                occurred_at=to_timestamp(started),
                state=encode_plan_state(view, terms),
            ),
            heartbeat_interval=duration_pb2.Duration(
                seconds=int(self._heartbeat), nanos=int(self._heartbeat % 1 * 1e9)
            ),
        )
        status_version = (view.plan.status, view.plan.version)
        while True:
            await changed.wait(self._heartbeat)
            if self._ledger.draining.is_set():
                raise self._ledger.draining_error()
            changes, now_status = await self._ledger.changes_since(
                principal, request.plan_id, watermark, self._watch_backlog
            )
            if len(changes) > self._watch_backlog:
                raise ReckonError(
                    Reason.WATCH_LAGGING,
                    "the watcher fell too far behind; reopen it for a fresh snapshot",
                    {"plan_id": request.plan_id},
                    retry_after_seconds=1.0,
                )
            events = []
            for change in changes:
                watermark = (change.created_at, change.row_id)
                events.append(
                    pb.PlanEvent(
                        type={
                            "check": pb.PLAN_EVENT_TYPE_CHECK,
                            "commitment": pb.PLAN_EVENT_TYPE_COMMITMENT,
                            "delivery": pb.PLAN_EVENT_TYPE_DELIVERY,
                        }[change.kind],
                        plan_id=request.plan_id,
                        occurred_at=to_timestamp(change.created_at),
                        findings=[encode_stored_finding(f) for f in change.findings],
                        check_id=change.row_id if change.kind == "check" else "",
                        outcome_id=change.row_id if change.kind != "check" else "",
                    )
                )
            if now_status != status_version:
                kind = (
                    pb.PLAN_EVENT_TYPE_STATUS_CHANGED
                    if now_status[0] != status_version[0]
                    else pb.PLAN_EVENT_TYPE_PLAN_UPDATED
                )
                status_version = now_status
                events.append(
                    pb.PlanEvent(
                        type=kind, plan_id=request.plan_id, occurred_at=to_timestamp(utcnow())
                    )
                )
            if any(e.type in _MONEY_EVENTS for e in events):
                view = await governance.plan_view(principal, request.plan_id)
                events[-1].state.CopyFrom(
                    encode_plan_state(view, terms_from_document(view.plan.document))
                )
            for event in events:
                yield pb.WatchPlanResponse(event=event)
            if not events:
                yield pb.WatchPlanResponse()  # heartbeat


_FENCED, _DRAINING = object(), object()
_MONEY_EVENTS = {
    pb.PLAN_EVENT_TYPE_COMMITMENT,
    pb.PLAN_EVENT_TYPE_STATUS_CHANGED,
    pb.PLAN_EVENT_TYPE_PLAN_UPDATED,
    pb.PLAN_EVENT_TYPE_CHECK,
}


async def _first_of(item: Awaitable[Any], fenced: Awaitable[Any], draining: Awaitable[Any]) -> Any:
    """The next queued ack, unless the stream is fenced or the server drains first."""
    tasks = {
        asyncio.ensure_future(item): None,
        asyncio.ensure_future(fenced): _FENCED,
        asyncio.ensure_future(draining): _DRAINING,
    }
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Also when the stream is cancelled meanwhile: the server-wide drain event would
        # otherwise hold a waiter of every stream that went away, for the server's lifetime.
        for task in tasks:
            task.cancel()
    for task, marker in tasks.items():
        if task in done and marker is None:
            return task.result()
    for task, marker in tasks.items():
        if task in done:
            return marker
    raise AssertionError("unreachable")


async def _drain(acks: asyncio.Queue[Any]) -> AsyncIterator[pb.StreamDeliveryResponse]:
    """Acknowledge whatever was already submitted, then stop."""
    while not acks.empty():
        item = acks.get_nowait()
        if item is _END:
            return
        with contextlib.suppress(ReckonError):
            yield await item


def _rejection(batch: pb.DeliveryBatch, expected: int, max_reports: int) -> ReckonError | None:
    """Why a batch that is not a duplicate cannot be applied, if it cannot. A seq below 1 was
    never committed: acking it DUPLICATE would have its producer drop it as already stored."""
    if batch.seq > expected:
        return sequence_gap(expected, batch.seq)
    if batch.seq < 1:
        violation = FieldViolation("batch.seq", "numbers the stream's batches from 1")
    elif not 1 <= len(batch.reports) <= max_reports:
        violation = FieldViolation("batch.reports", f"must hold 1..{max_reports} reports")
    else:
        return None
    return invalid(Reason.INVALID_REQUEST, [violation])


def _observe(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


_Acked = asyncio.Future[pb.StreamDeliveryResponse]
"""A batch's ack once it has one."""


def _ready(ack: pb.BatchAck) -> _Acked:
    future: _Acked = asyncio.get_running_loop().create_future()
    future.set_result(pb.StreamDeliveryResponse(ack=ack))
    return future


def _failed(error: ReckonError) -> _Acked:
    future: _Acked = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    return future


async def _committed(
    commit: Awaitable[BatchApplied], seq: int, next_seq: int
) -> pb.StreamDeliveryResponse:
    applied = await commit
    # Filled inside its response: given to the response's constructor, the ack and all its
    # results would be copied.
    response = pb.StreamDeliveryResponse()
    ack = response.ack
    ack.seq, ack.disposition, ack.next_seq = seq, pb.BATCH_DISPOSITION_COMMITTED, next_seq
    fill_results(ack, applied)
    return response
