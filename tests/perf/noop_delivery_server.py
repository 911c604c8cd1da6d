"""A grpc.aio StreamDelivery servicer that stores nothing: acks each batch at once with one
accepted result per report (the same message shapes as Reckon's)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from reckon.v1 import delivery_service_pb2 as pb
from reckon.v1 import delivery_service_pb2_grpc, types_pb2
from reckon_server.services.delivery import StreamLimits


class NoopDelivery(delivery_service_pb2_grpc.DeliveryServiceServicer):  # type: ignore[misc]
    async def StreamDelivery(
        self, requests: AsyncIterator[pb.StreamDeliveryRequest], context: Any
    ) -> AsyncIterator[pb.StreamDeliveryResponse]:
        async for request in requests:
            if request.HasField("open"):
                yield pb.StreamDeliveryResponse(
                    opened=pb.StreamOpened(
                        stream_id=request.open.stream_id,
                        next_seq=1,
                        max_batch_reports=StreamLimits.max_batch_reports,
                        max_inflight_batches=StreamLimits.window,
                    )
                )
                continue
            batch = request.batch
            yield pb.StreamDeliveryResponse(
                ack=pb.BatchAck(
                    seq=batch.seq,
                    disposition=pb.BATCH_DISPOSITION_COMMITTED,
                    next_seq=batch.seq + 1,
                    results=[
                        pb.DeliveryResult(
                            accepted=pb.DeliveryAccepted(
                                outcome_id="out_000000000000000000000000",
                                status=types_pb2.PLAN_OUTCOME_STATUS_ACCEPTED,
                            )
                        )
                        for _ in batch.reports
                    ],
                )
            )


async def main(port: int) -> None:
    server = aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    delivery_service_pb2_grpc.add_DeliveryServiceServicer_to_server(NoopDelivery(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
