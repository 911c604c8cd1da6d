"""A delivery producer process for resume tests:

    python -m tests.support.producer TARGET KEY STREAM_ID PLAN_ID MEDIA_BUY REPORTS BATCH

Streams REPORTS deterministic one-minute reports (report n: minute n, spend n + 1 micros) with
DeliveryStreamer. On start it skips what the stream already committed, as a producer with a
durable source would. Prints each acknowledged seq as `acked N`, flushed, and `done` last.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2

from reckon.v1 import delivery_service_pb2 as pb
from reckon.v1 import types_pb2
from reckon_client import DeliveryStreamer, Reckon

START = datetime(2026, 3, 15, tzinfo=UTC)


def minute_report(plan_id: str, media_buy_id: str, n: int) -> pb.PlanDelivery:
    begin, end = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    begin.FromDatetime(START + timedelta(minutes=n))
    end.FromDatetime(START + timedelta(minutes=n + 1))
    return pb.PlanDelivery(
        plan_id=plan_id,
        delivery=types_pb2.DeliveryReport(
            media_buy_id=media_buy_id,
            spend_micros=n + 1,
            impressions=1,
            reporting_period=types_pb2.ReportingPeriod(start=begin, end=end),
        ),
    )


async def main(
    target: str, key: str, stream_id: str, plan_id: str, media_buy_id: str, reports: int, batch: int
) -> None:
    def acked(ack: pb.BatchAck) -> None:
        print(f"acked {ack.seq}", flush=True)

    async with Reckon(target, key) as reckon:
        streamer = DeliveryStreamer(
            reckon.delivery,
            stream_id,
            batch_size=batch,
            window=4,
            on_ack=acked,
            backoff=(0.05, 0.5),
        )
        async with streamer:
            for n in range((streamer.next_seq - 1) * batch, reports):
                await streamer.add(minute_report(plan_id, media_buy_id, n))
    print("done", flush=True)


if __name__ == "__main__":
    target, key, stream_id, plan_id, media_buy_id, reports, batch = sys.argv[1:8]
    asyncio.run(main(target, key, stream_id, plan_id, media_buy_id, int(reports), int(batch)))
