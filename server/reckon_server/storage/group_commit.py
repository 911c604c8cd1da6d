"""Group commit: one writer task coalesces concurrent writes into one transaction.

Callers submit an item to a `BatchOp`; the writer drains everything queued, applies each op
once to all of its items inside a single transaction, commits, and only then resolves every
caller. An op returns a result or a ReckonError per item (expected refusals, decided before
anything is written); if the transaction itself fails, none of their rows remain, and every
item of the batch gets that failure when storage is out. When it failed for another reason,
most likely one item it could not take, each item is applied again in a transaction of its
own, so that such an item fails alone, as INTERNAL: it would fail the same way however often
it was retried. Ops are synchronous code run by `Database.send_batch`, so a whole batch costs
the event loop one hand-off; on SQLite ops, items and results travel pickled to the writer
process and back, and a batch of heavy items (`BatchOp.pipelined`) is sent while the writer
still commits the previous one (transactions still apply one after another, in the order
they were sent).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import sqlalchemy as sa

from reckon_server.errors import Reason, ReckonError, internal, unavailable
from reckon_server.storage.database import Database

log = logging.getLogger(__name__)
_MAX_LINGER_TURNS = 8
_CLOSE_SECONDS = 10.0
MAX_WEIGHT_SQLITE = 8192
MAX_WEIGHT_POSTGRES = 2048
"""PostgreSQL spent nearly twice the CPU per delivery report in transactions of 4,096 and
8,192 reports as in ones of 2,048, and ingested less (its statements took no longer, nor did a
larger `wal_buffers` help), where SQLite's writer gains from every larger transaction."""

I = TypeVar("I")  # noqa: E741 - conventional name for an item type
R = TypeVar("R")
I_contra = TypeVar("I_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)


class BatchOp(Protocol[I_contra, R_co]):
    """Applies many items of one kind in the writer's transaction, in submission order."""

    pipelined: bool
    """Whether a transaction led by this op's items may be sent while the previous one still
    commits. Worth it for heavy items (a batch of delivery reports), whose transactions keep
    the writer busy: it then never idles between them. Light items (one unary write) are
    better off waiting, to share the next transaction with everything that arrives meanwhile.
    """

    def apply(
        self, conn: sa.Connection, items: Sequence[I_contra]
    ) -> Sequence[R_co | ReckonError]: ...


@dataclass
class _Pending(Generic[I, R]):
    op: BatchOp[I, R]
    item: I
    weight: int
    future: asyncio.Future[R] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommitter:
    def __init__(
        self,
        database: Database,
        *,
        max_batch: int = 1024,
        max_weight: int = 0,
        max_queue: int = 65536,
        linger_seconds: float = 0.002,
    ) -> None:
        self._database = database
        self._max_batch = max_batch
        self._max_weight = max_weight or (
            MAX_WEIGHT_SQLITE if database.is_sqlite else MAX_WEIGHT_POSTGRES
        )
        self._linger_seconds = linger_seconds
        self._queue: asyncio.Queue[_Pending[Any, Any]] = asyncio.Queue(max_queue)
        self._writer: asyncio.Task[None] | None = None
        self._sent: set[asyncio.Task[None]] = set()
        """Batches sent to storage whose callers are not resolved yet."""
        self.batches = 0
        """Transactions committed so far (for tests and benchmarks)."""
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Transactions sent to storage whose callers are not resolved yet (for tests)."""
        return len(self._sent)

    @property
    def queued(self) -> int:
        """Items waiting for a transaction (for tests)."""
        return self._queue.qsize()

    async def submit(self, op: BatchOp[I, R], item: I, *, weight: int = 1) -> R:
        """Apply `item` and return its result once the transaction holding it has committed.

        A transaction takes items until their weights (the rows they write: a delivery batch
        weighs its reports) reach `max_weight` (0: `MAX_WEIGHT_SQLITE` or
        `MAX_WEIGHT_POSTGRES`, by backend): a backlog then commits in transactions of bounded size,
        instead of one whose rows, results and copies in the SQLite writer's pipe would all be
        in memory at once."""
        if self._closed:
            # Storage is being released: a new writer would open connections nobody closes.
            raise unavailable(Reason.DRAINING, "the server is shutting down")
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_forever())
        pending: _Pending[I, R] = _Pending(op, item, weight)
        if self._queue.full():
            await self._queue.put(pending)
        else:
            self._queue.put_nowait(pending)
        # A caller that gives up (deadline, cancel) cancels its future: the item stays queued
        # and is committed with its batch, and nothing is left waiting for its result.
        return await pending.future

    async def close(self) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        # Batches already sent settle with their transactions, if storage answers in time.
        if self._sent:
            _, late = await asyncio.wait(self._sent, timeout=_CLOSE_SECONDS)
            for settling in late:
                settling.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        queued = []
        while not self._queue.empty():
            queued.append(self._queue.get_nowait())
        _fail(queued, unavailable(Reason.DRAINING, "the server is shutting down"))

    async def _write_forever(self) -> None:
        concurrent = False
        depth = self._database.batch_pipeline_depth
        while True:
            batch = [await self._queue.get()]
            in_flight = depth if batch[0].op.pipelined else 1
            while len(self._sent) >= in_flight:
                await asyncio.wait(self._sent, return_when=asyncio.FIRST_COMPLETED)
            # While writes arrive concurrently, a short wait lets more of them share the
            # transaction: each then costs the loop and the database less, which under load
            # is worth more than the wait. A lone writer (last batch of one) does not wait.
            if concurrent and self._linger_seconds:
                await asyncio.sleep(self._linger_seconds)
            # Turns of the loop let handlers that are already runnable join this batch; an
            # idle server stops after the first turn.
            for _ in range(_MAX_LINGER_TURNS):
                queued = self._queue.qsize()
                await asyncio.sleep(0)
                if self._queue.qsize() == queued:
                    break
            weight = batch[0].weight
            while (
                len(batch) < self._max_batch
                and weight < self._max_weight
                and not self._queue.empty()
            ):
                batch.append(self._queue.get_nowait())
                weight += batch[-1].weight
            concurrent = len(batch) > 1
            await self._send(batch)

    async def _send(self, batch: list[_Pending[Any, Any]]) -> None:
        """Send the batch's transaction now, in order; its callers are resolved once it
        commits, while the next batch is put together."""
        by_op: dict[int, list[_Pending[Any, Any]]] = {}
        for pending in batch:
            by_op.setdefault(id(pending.op), []).append(pending)
        groups = list(by_op.values())
        work = _ApplyAll([(group[0].op, [p.item for p in group]) for group in groups])
        try:
            committed = await self._database.send_batch(work)
        except asyncio.CancelledError:
            _fail(batch, unavailable(Reason.DRAINING, "the server is shutting down"))
            raise
        settling = asyncio.get_running_loop().create_task(self._settle(groups, committed))
        self._sent.add(settling)
        settling.add_done_callback(self._sent.discard)

    async def _apply_alone(self, pending: _Pending[Any, Any]) -> None:
        try:
            committed = await self._database.send_batch(_ApplyAll([(pending.op, [pending.item])]))
        except ReckonError as err:
            _fail([pending], err)
            return
        await self._settle([[pending]], committed)

    async def _settle(
        self, groups: list[list[_Pending[Any, Any]]], committed: Awaitable[list[Sequence[Any]]]
    ) -> None:
        batch = [pending for group in groups for pending in group]
        try:
            results = await committed
        except ReckonError as err:
            _fail(batch, err)
            return
        except asyncio.CancelledError:
            _fail(batch, unavailable(Reason.DRAINING, "the server is shutting down"))
            raise
        except Exception:
            if len(batch) == 1:
                # Not an outage, and alone: retrying would meet the same fault, so the caller
                # learns it is the server's (with an incident id), not that it may retry.
                _fail(batch, internal(log, "a write failed on its own"))
                return
            log.exception("group commit of %d items failed", len(batch))
            # Not an outage (those arrive as ReckonErrors): most likely one item that its
            # transaction cannot take. Each item is applied again on its own, in order, so
            # that only such an item fails, not everything that shared its transaction.
            try:
                for pending in batch:
                    await self._apply_alone(pending)
            except asyncio.CancelledError:
                _fail(batch, unavailable(Reason.DRAINING, "the server is shutting down"))
                raise
            return
        self.batches += 1
        outcomes = (
            pair
            for group, group_results in zip(groups, results, strict=True)
            for pair in zip(group, group_results, strict=True)
        )
        for pending, result in outcomes:
            if pending.future.done():
                continue
            if isinstance(result, ReckonError):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)


@dataclass(frozen=True)
class _ApplyAll:
    """One batch's work: each op applied to its items, in one transaction."""

    groups: list[tuple[BatchOp[Any, Any], list[Any]]]

    def __call__(self, conn: sa.Connection) -> list[Sequence[Any]]:
        return [op.apply(conn, items) for op, items in self.groups]


def _fail(batch: list[_Pending[Any, Any]], err: ReckonError) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(err)
