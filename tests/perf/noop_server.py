"""A grpc.aio server whose AuditService.Report does nothing: the baseline of the Report
benchmark (same messages, same transport, no auth, no storage)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from google.protobuf import timestamp_pb2
from grpc import aio

from reckon.v1 import audit_service_pb2 as pb
from reckon.v1 import audit_service_pb2_grpc


class NoopAudit(audit_service_pb2_grpc.AuditServiceServicer):  # type: ignore[misc]
    async def Report(self, request: pb.ReportRequest, context: Any) -> pb.ReportResponse:
        return pb.ReportResponse(
            audit_event_id=request.audit_event_id,
            status=request.outcome.status,
            reported_at=timestamp_pb2.Timestamp(seconds=1),
            revision=1,
            created=True,
        )


async def main(port: int) -> None:
    server = aio.server()
    audit_service_pb2_grpc.add_AuditServiceServicer_to_server(NoopAudit(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
