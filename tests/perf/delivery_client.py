"""Load generator for the delivery benchmark, run as its own process:

    python -m tests.perf.delivery_client TARGET KEY STREAM PLAN MEDIA_BUYS REPORTS BATCH \
        [FIRST] [SPEND_MICROS]

Streams REPORTS reports over MEDIA_BUYS media buys (one period per report, so every row is
distinct; report numbers start at FIRST, default 0, so runs can continue one another), BATCH
per batch, keeping as many batches un-acked as the server offers (its
`StreamOpened.max_inflight_batches`, as `DeliveryStreamer` does). Each report spends
SPEND_MICROS in its minute, by default ON_PLAN_SPEND. Prints one JSON line: reports
acknowledged, seconds, ack latency p50/p99 and the cores it used meanwhile (its CPU shares the
machine with the server's).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2
from grpc import aio

from reckon.v1 import delivery_service_pb2 as pb
from reckon.v1 import delivery_service_pb2_grpc, types_pb2

START = datetime(2026, 3, 15, tzinfo=UTC)
ON_PLAN_SPEND = 7_631_000
"""1,000,000 committed over 13 planned weeks is 7.631 a minute."""


def batches(
    plan_id: str,
    media_buys: int,
    reports: int,
    size: int,
    offset: int = 0,
    spend_micros: int = ON_PLAN_SPEND,
) -> list[pb.DeliveryBatch]:
    out = []
    for seq, first in enumerate(range(offset, offset + reports, size), 1):
        items = []
        for n in range(first, min(first + size, offset + reports)):
            start = START + timedelta(minutes=n // media_buys)
            begin, end = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
            begin.FromDatetime(start)
            end.FromDatetime(start + timedelta(minutes=1))
            items.append(
                pb.PlanDelivery(
                    plan_id=plan_id,
                    delivery=types_pb2.DeliveryReport(
                        media_buy_id=f"mb_{n % media_buys}",
                        reporting_period=types_pb2.ReportingPeriod(start=begin, end=end),
                        spend_micros=spend_micros,
                        impressions=100,
                        cpm_micros=spend_micros * 10,
                    ),
                )
            )
        out.append(pb.DeliveryBatch(seq=seq, reports=items))
    return out


async def main(
    target: str,
    key: str,
    stream_id: str,
    plan_id: str,
    media_buys: int,
    reports: int,
    size: int,
    offset: int,
    spend_micros: int,
) -> None:
    # Wrapped in their requests beforehand, as `DeliveryStreamer` seals them: wrapping a batch
    # as it is sent copies it.
    work = [
        pb.StreamDeliveryRequest(batch=batch)
        for batch in batches(plan_id, media_buys, reports, size, offset, spend_micros)
    ]
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    async with aio.insecure_channel(target, options=options) as channel:
        stub = delivery_service_pb2_grpc.DeliveryServiceStub(channel)
        call = stub.StreamDelivery(metadata=(("authorization", f"Bearer {key}"),))
        await call.write(pb.StreamDeliveryRequest(open=pb.StreamOpen(stream_id=stream_id)))
        opened = (await call.read()).opened
        window = asyncio.Semaphore(opened.max_inflight_batches)
        started, cpu_started = time.perf_counter(), time.process_time()

        async def send() -> None:
            for request in work:
                await window.acquire()
                sent_at[request.batch.seq] = time.perf_counter()
                await call.write(request)

        sender = asyncio.ensure_future(send())
        acked = 0
        for _ in work:
            ack = (await call.read()).ack
            if ack.disposition != pb.BATCH_DISPOSITION_COMMITTED:
                raise SystemExit(f"batch {ack.seq} was not committed: {ack}")
            latencies.append(time.perf_counter() - sent_at[ack.seq])
            acked += len(ack.results)
            window.release()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        await sender
        await call.done_writing()
    latencies.sort()
    print(
        json.dumps(
            {
                "reports": acked,
                "seconds": elapsed,
                "client_cores": cpu / elapsed,
                "p50_ms": latencies[len(latencies) // 2] * 1e3,
                "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
            }
        )
    )


if __name__ == "__main__":
    target, key, stream_id, plan_id, media_buys, reports, size = sys.argv[1:8]
    offset = int(sys.argv[8]) if len(sys.argv) > 8 else 0
    spend = int(sys.argv[9]) if len(sys.argv) > 9 else ON_PLAN_SPEND
    asyncio.run(
        main(
            target, key, stream_id, plan_id, int(media_buys), int(reports), int(size), offset, spend
        )
    )
