"""A storage outage: Report answers UNAVAILABLE/REPORT_FAILED with RetryInfo, writes nothing,
and works again once the database is back: its own PostgreSQL, which it stops, and SQLite's
writer process, which it kills with a Report in flight."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sqlite3
from pathlib import Path

import grpc
import pytest
from grpc import aio

from reckon.v1 import audit_service_pb2 as pb
from reckon.v1 import types_pb2
from tests.support.api import RunningServer, bearer, decode
from tests.support.postgres import start_postgres


@pytest.mark.timeout(180)
async def test_report_during_an_outage_fails_retryably_and_writes_nothing() -> None:
    postgres = start_postgres(private=True)
    try:
        api = await RunningServer.start(await postgres.create_database())
        try:
            agent = await api.register("survivor")
            event = await api.stubs.audit.Execute(
                pb.ExecuteRequest(action_type="db.migrate"), metadata=bearer(agent)
            )
            request = pb.ReportRequest(
                audit_event_id=event.audit_event_id,
                outcome=pb.Outcome(status=types_pb2.OUTCOME_STATUS_SUCCESS),
            )
            # The agent's key was just used, so it is cached: the outage hits the write.
            postgres.stop_server()
            with pytest.raises(aio.AioRpcError) as raised:
                await api.stubs.audit.Report(request, metadata=bearer(agent))
            error = decode(raised.value)
            assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
            assert error.reason == "REPORT_FAILED"
            assert error.metadata["recovery"] == "transient"
            assert "google.rpc.RetryInfo" in error.details

            postgres.start_server()
            retried = await api.stubs.audit.Report(request, metadata=bearer(agent), timeout=30)
            assert (retried.created, retried.revision) == (True, 1)
        finally:
            await api.close()
    finally:
        postgres.stop()


async def test_a_report_in_flight_when_the_sqlite_writer_process_dies_fails_then_recovers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "writer.db"
    api = await RunningServer.start(f"sqlite+aiosqlite:///{path}")
    try:
        agent = await api.register("outlived")
        event = await api.stubs.audit.Execute(
            pb.ExecuteRequest(action_type="db.migrate"), metadata=bearer(agent)
        )

        def report(message: str) -> pb.ReportRequest:
            return pb.ReportRequest(
                audit_event_id=event.audit_event_id,
                outcome=pb.Outcome(status=types_pb2.OUTCOME_STATUS_SUCCESS, message=message),
            )

        first = await api.stubs.audit.Report(report("first"), metadata=bearer(agent))
        assert (first.created, first.revision) == (True, 1)
        [writer] = [
            p for p in multiprocessing.active_children() if p.name == "reckon-sqlite-writer"
        ]
        assert writer.pid is not None

        with sqlite3.connect(path, isolation_level=None) as blocker:
            blocker.execute("BEGIN IMMEDIATE")  # holds the Report's transaction in the writer
            lost = asyncio.ensure_future(
                api.stubs.audit.Report(report("lost"), metadata=bearer(agent))
            )
            sent = api.server.database._batch_writer._awaiting
            while not sent:  # noqa: ASYNC110 - polls until the transaction is in the pipe
                await asyncio.sleep(0.01)
            os.kill(writer.pid, signal.SIGKILL)
            writer.join(10)
            with pytest.raises(aio.AioRpcError) as raised:
                await lost
            blocker.execute("ROLLBACK")
        error = decode(raised.value)
        assert (raised.value.code(), error.reason) == (grpc.StatusCode.UNAVAILABLE, "REPORT_FAILED")
        assert "google.rpc.RetryInfo" in error.details

        retried = await api.stubs.audit.Report(report("retried"), metadata=bearer(agent))
        assert (retried.created, retried.revision) == (False, 2)
        stored = await api.stubs.audit.GetAuditEvent(
            pb.GetAuditEventRequest(audit_event_id=event.audit_event_id, include_history=True),
            metadata=bearer(agent),
        )
        assert [(r.revision, r.outcome.message) for r in stored.history] == [
            (1, "first"),
            (2, "retried"),
        ]
    finally:
        await api.close()
