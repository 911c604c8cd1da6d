"""A resumable, pipelined producer for DeliveryService.StreamDelivery."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc import aio

from reckon.v1 import delivery_service_pb2 as pb
from reckon_client.errors import ReckonError, status_code

log = logging.getLogger(__name__)
AckHandler = Callable[[pb.BatchAck], None]
_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
}
_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


_FALLBACK_WINDOW = 8
"""Until a server offers its window (and with one that offers none)."""


class DeliveryStreamer:
    """Batches reports, keeps a window of batches un-acknowledged (as many as the server offers
    in its `StreamOpened.max_inflight_batches`, or `window` if that is fewer), and survives
    disconnects: it reconnects with jittered exponential backoff, learns the server's
    `next_seq`, and re-sends exactly the batches not yet committed. Every batch is acknowledged
    once, through `on_ack`, with its per-report results (a batch committed just before a
    disconnect is acknowledged without results: its ack was lost, its rows are not).

    A failure the server classified (the `recovery` of its ErrorInfo) is retried when it is
    transient, no sooner than its RetryInfo asks, and fails the streamer otherwise. One that
    only the transport saw is retried when it is of a passing kind; `INTERNAL` and `UNKNOWN`
    at most `max_faults` times in a row without a batch acknowledged in between, as one that
    keeps coming back would forever.

        async with DeliveryStreamer(reckon.delivery, "producer-1") as streamer:
            for report in reports:
                await streamer.add(report)
    """

    def __init__(
        self,
        stub: Any,
        stream_id: str,
        *,
        batch_size: int = 500,
        window: int | None = None,
        on_ack: AckHandler | None = None,
        backoff: tuple[float, float] = (0.05, 5.0),
        metadata: tuple[tuple[str, str], ...] = (),
        max_faults: int = 3,
    ) -> None:
        self._stub = stub
        self._stream_id = stream_id
        if window is not None and window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        self._batch_size = batch_size
        self._window_asked = window
        self._window = window or _FALLBACK_WINDOW
        self._on_ack = on_ack
        self._backoff = backoff
        self._metadata = metadata
        self._max_faults = max_faults
        self._pending: list[pb.PlanDelivery] = []
        self._unacked: OrderedDict[int, pb.StreamDeliveryRequest] = OrderedDict()
        """Sealed batches by seq, each in the request that sends it (and sends it again after
        a reconnect): wrapped as it is sent, a batch would be copied each time."""
        self._next_seq: int | None = None
        """The seq the next sealed batch gets."""
        self._changed = asyncio.Condition()
        self._runner: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._acks = 0
        self.reconnects = 0

    async def __aenter__(self) -> DeliveryStreamer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if exc_info[0] is None:
            await self.flush()
        await self.close()

    async def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run())
        async with self._changed:
            await self._changed.wait_for(lambda: self._next_seq is not None or self._failure)
        self._raise_failure()

    @property
    def window(self) -> int:
        """Batches this streamer keeps un-acknowledged at most, as of its latest connection:
        a server stops reading past the window it offers, and every batch fewer than that
        leaves its group commit smaller and its producer waiting on round trips."""
        return self._window

    @property
    def next_seq(self) -> int:
        """The seq the next batch gets; after `start()`, one more than the last batch this
        stream ever committed. A restarted producer resumes its input at
        `(next_seq - 1) * batch_size` reports."""
        assert self._next_seq is not None, "start() first"
        return self._next_seq

    async def add(self, report: pb.PlanDelivery) -> None:
        """Queue one report; waits while the window of un-acked batches is full."""
        self._pending.append(report)
        if len(self._pending) >= self._batch_size:
            await self._seal()

    async def flush(self) -> None:
        """Send the partial batch and wait until every batch is acknowledged."""
        if self._pending:
            await self._seal()
        async with self._changed:
            await self._changed.wait_for(lambda: not self._unacked or self._failure)
        self._raise_failure()

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    async def _seal(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._unacked) < self._window or self._failure)
            self._raise_failure()
            assert self._next_seq is not None
            seq = self._next_seq
            self._next_seq += 1
            request = pb.StreamDeliveryRequest()
            request.batch.seq = seq
            request.batch.reports.extend(self._pending)
            self._unacked[seq] = request
            self._pending = []
            self._changed.notify_all()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _run(self) -> None:
        attempt = faults = 0
        while True:
            acks_before = self._acks
            asked_wait = 0.0
            try:
                await self._connect()
            except aio.AioRpcError as lost:
                if self._acks > acks_before:
                    attempt = faults = 0
                decoded = ReckonError.from_rpc_error(lost)
                faults += decoded is None and lost.code() in _FAULTS
                retryable = decoded.transient if decoded else lost.code() in _TRANSIENT | _FAULTS
                if not retryable or faults > self._max_faults:
                    await self._fail(decoded or lost)
                    return
                cause = lost.code().name
                asked_wait = (decoded.retry_after if decoded else None) or 0.0
            except ReckonError as refused:
                await self._fail(refused)
                return
            except Exception as err:
                await self._fail(err)
                raise
            attempt += 1
            self.reconnects += 1
            low, high = self._backoff
            # Never sooner than the server asked (RetryInfo): an overloaded server that is
            # retried at once only stays overloaded.
            delay = max(asked_wait, min(high, low * 2**attempt) * random.uniform(0.5, 1.0))
            log.info(
                "delivery stream %s lost (%s); retrying in %.2fs", self._stream_id, cause, delay
            )
            await asyncio.sleep(delay)

    async def _fail(self, error: BaseException) -> None:
        async with self._changed:
            self._failure = error
            self._changed.notify_all()

    async def _connect(self) -> None:
        # Requests go through a queue that ends with the connection rather than through
        # `call.write`: on a channel with interceptors, grpc forwards writes with a task of its
        # own, which waits forever for more once the server has ended the call.
        outbox: asyncio.Queue[pb.StreamDeliveryRequest | None] = asyncio.Queue(maxsize=1)
        outbox.put_nowait(pb.StreamDeliveryRequest(open=pb.StreamOpen(stream_id=self._stream_id)))
        call = self._stub.StreamDelivery(_until_none(outbox), metadata=self._metadata)
        sender: asyncio.Future[None] | None = None
        try:
            self._check(first := await call.read())
            opened = first.opened
            async with self._changed:
                for seq in [s for s in self._unacked if s < opened.next_seq]:
                    # Committed before the last connection dropped; its ack was lost.
                    self._acknowledge(
                        pb.BatchAck(
                            seq=seq,
                            disposition=pb.BATCH_DISPOSITION_COMMITTED,
                            next_seq=opened.next_seq,
                        )
                    )
                if self._next_seq is None or self._next_seq < opened.next_seq:
                    self._next_seq = opened.next_seq
                if opened.max_inflight_batches:
                    offered = opened.max_inflight_batches
                    self._window = min(self._window_asked or offered, offered)
                self._changed.notify_all()
            sender = asyncio.ensure_future(self._send(outbox, opened.next_seq))
            while True:
                self._check(response := await call.read())
                async with self._changed:
                    self._acknowledge(response.ack)
                    self._changed.notify_all()
        finally:
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
            while not outbox.empty():
                outbox.get_nowait()
            outbox.put_nowait(None)
            call.cancel()

    @staticmethod
    def _check(response: Any) -> None:
        """Raise for a response that ends the connection: the stream's end (even before it
        opened), or a batch the server rejected."""
        if response is aio.EOF:
            raise aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, aio.Metadata(), aio.Metadata(), "stream ended"
            )
        ack = response.ack
        if ack.disposition != pb.BATCH_DISPOSITION_REJECTED:
            return
        if ack.error.code != grpc.StatusCode.OUT_OF_RANGE.value[0]:
            # Not a gap, which a reconnect resolves: the batch itself is refused.
            raise ReckonError.from_status(ack.error) or ReckonError(
                status_code(ack.error.code), 0, "UNSPECIFIED", ack.error.message
            )
        raise aio.AioRpcError(
            grpc.StatusCode.ABORTED,
            aio.Metadata(),
            aio.Metadata(),
            f"batch {ack.seq} rejected: {ack.error.message}",
        )

    def _acknowledge(self, ack: pb.BatchAck) -> None:
        if self._unacked.pop(ack.seq, None) is None:
            return
        self._acks += 1
        if self._on_ack is not None:
            self._on_ack(ack)

    async def _send(
        self, outbox: asyncio.Queue[pb.StreamDeliveryRequest | None], first_seq: int
    ) -> None:
        """Send every un-acked batch from `first_seq` on, in order, as they are sealed."""
        seq = first_seq
        while True:
            await outbox.put(await self._sealed(seq))
            seq += 1

    async def _sealed(self, seq: int) -> pb.StreamDeliveryRequest:
        async with self._changed:
            await self._changed.wait_for(lambda: seq in self._unacked)
            return self._unacked[seq]


async def _until_none(
    outbox: asyncio.Queue[pb.StreamDeliveryRequest | None],
) -> AsyncIterator[pb.StreamDeliveryRequest]:
    while (request := await outbox.get()) is not None:
        yield request
