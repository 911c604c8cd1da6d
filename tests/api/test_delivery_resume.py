"""Delivery survives crashes: a producer killed mid-stream and a server killed mid-stream both
end with per-period totals equal to what was sent, every acknowledged batch stored, and
nothing counted twice. Also: drain on shutdown."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sys

import grpc
import pytest
from grpc import aio

from reckon.v1 import admin_service_pb2
from reckon.v1 import delivery_service_pb2 as dpb
from reckon_client import DeliveryStreamer, Reckon
from tests.support.api import RunningServer, Stubs, bearer, decode, new_secret
from tests.support.delivery import (
    RawStream,
    assert_tallies_count_the_trail,
    committed_plan,
    report,
    stored_next_seq,
    stored_rows,
    stream_commits_held,
    until,
)
from tests.support.governance import Buyer, M, plan
from tests.support.processes import start_reckon
from tests.support.producer import minute_report

REPORTS, BATCH = 6_000, 100
PLAN, MEDIA_BUY = "resumed", "mb_resume"


async def _totals(database_url: str) -> tuple[int, int]:
    [(count, spend)] = await stored_rows(
        database_url, "SELECT count(*), coalesce(sum(spend_micros), 0) FROM delivery_periods"
    )
    return int(count), int(spend)


EXPECTED = (REPORTS, sum(n + 1 for n in range(REPORTS)))


async def _producer(target: str, key: str, stream_id: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.producer",
        target,
        key,
        stream_id,
        PLAN,
        MEDIA_BUY,
        str(REPORTS),
        str(BATCH),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.timeout(300)
async def test_a_producer_killed_mid_stream_resumes_without_loss_or_double_count(
    api: RunningServer,
) -> None:
    buyer = await committed_plan(api, "crashing-producer", PLAN, {MEDIA_BUY: 150_000})
    first = await _producer(api.target, buyer.key, "crashy")
    assert first.stdout is not None
    acked: list[int] = []
    while len(acked) < 5:
        line = (await asyncio.wait_for(first.stdout.readline(), 60)).decode()
        assert line, "producer ended early"
        if line.startswith("acked"):
            acked.append(int(line.split()[1]))
    first.kill()
    await first.wait()
    committed = await stored_next_seq(api.database_url, "crashy") - 1
    assert committed >= max(acked)  # every acknowledged batch is durable

    second = await _producer(api.target, buyer.key, "crashy")
    out, _ = await asyncio.wait_for(second.communicate(), 240)
    assert second.returncode == 0
    assert out.decode().splitlines()[-1] == "done"
    assert await _totals(api.database_url) == EXPECTED
    assert await stored_next_seq(api.database_url, "crashy") == REPORTS // BATCH + 1
    await assert_tallies_count_the_trail(api.database_url)


@pytest.mark.timeout(300)
async def test_a_server_killed_mid_stream_loses_nothing_acknowledged(tmp_path: object) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/crash.db"
    admin = new_secret()
    server = await start_reckon(url, admin)
    port = server.port
    async with aio.insecure_channel(server.target) as channel:
        key = (
            await Stubs.on(channel).admin.RegisterAgent(
                admin_service_pb2.RegisterAgentRequest(name="steady"), metadata=bearer(admin)
            )
        ).api_key
    acked: list[int] = []
    async with Reckon(server.target, key) as reckon:
        buyer = Buyer.__new__(Buyer)
        buyer.key, buyer.stub = key, reckon.governance
        await buyer.sync(plan(PLAN, 10_000_000))
        await buyer.commit(PLAN, 150_000, MEDIA_BUY)
        streamer = DeliveryStreamer(
            reckon.delivery,
            "survivor",
            batch_size=BATCH,
            window=4,
            on_ack=lambda ack: on_ack(ack.seq),
            backoff=(0.05, 0.5),
        )
        await streamer.start()
        restarted, ten_acked = asyncio.Event(), asyncio.Event()

        def on_ack(seq: int) -> None:
            acked.append(seq)
            if len(acked) >= 10:
                ten_acked.set()

        async def crash_and_restart() -> None:
            nonlocal server
            await ten_acked.wait()
            server.process.send_signal(signal.SIGKILL)
            await server.process.wait()
            assert await stored_next_seq(url, "survivor") - 1 >= max(acked)
            server = await start_reckon(url, admin, port=port)
            restarted.set()

        crasher = asyncio.create_task(crash_and_restart())
        for n in range(REPORTS):
            await streamer.add(minute_report(PLAN, MEDIA_BUY, n))
        await streamer.flush()
        await streamer.close()
        await crasher
        assert restarted.is_set()
        assert streamer.reconnects >= 1
    await server.stop()
    assert sorted(set(acked)) == list(range(1, REPORTS // BATCH + 1))
    assert await _totals(url) == EXPECTED
    await assert_tallies_count_the_trail(url)


async def test_a_storage_failure_fails_the_batches_it_held_and_the_stream_resumes_after_them(
    database_url: str,
) -> None:
    api = await RunningServer.start(database_url)
    try:
        buyer = await committed_plan(api, "outage", PLAN, {MEDIA_BUY: 150_000})
        stream = RawStream(api, buyer.key, "outage")
        await stream.opened()
        stream.send(1, [report(PLAN, MEDIA_BUY, 15, M)])
        assert (await stream.ack()).disposition == dpb.BATCH_DISPOSITION_COMMITTED
        later = {2: [report(PLAN, MEDIA_BUY, 16, M)], 3: [report(PLAN, MEDIA_BUY, 15, 3 * M)]}
        async with stream_commits_held(database_url):
            for seq, reports in later.items():
                stream.send(seq, reports)
            await until(lambda: api.server.committer.in_flight > 0)
            await _lose_storage_under(database_url)
            with pytest.raises(aio.AioRpcError) as raised:
                await stream.ack()
        error = decode(raised.value)
        assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")
        assert "google.rpc.RetryInfo" in error.details
        assert await _totals(database_url) == (1, M)
        assert await stored_next_seq(database_url, "outage") == 2

        resumed = RawStream(api, buyer.key, "outage")
        assert (await resumed.opened()).next_seq == 2
        for seq, reports in later.items():
            resumed.send(seq, reports)
            assert (await resumed.ack()).disposition == dpb.BATCH_DISPOSITION_COMMITTED
        resumed.close()
        assert await _totals(database_url) == (2, 4 * M)
        assert (await buyer.state(PLAN)).spend_micros == 4 * M
        await assert_tallies_count_the_trail(database_url)
    finally:
        await api.close()


async def _lose_storage_under(database_url: str) -> None:
    """Storage goes away under the transactions waiting for their lock: SQLite's writer
    process is killed, PostgreSQL's connections holding them are terminated."""
    if database_url.startswith("sqlite"):
        [writer] = [
            p for p in multiprocessing.active_children() if p.name == "reckon-sqlite-writer"
        ]
        assert writer.pid is not None
        os.kill(writer.pid, signal.SIGKILL)
        writer.join(10)
        return
    terminate_waiting = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    for _ in range(1000):
        [(terminated,)] = await stored_rows(database_url, terminate_waiting)
        if terminated:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no transaction waited for the lock")


async def _acks_until_the_stream_ends(stream: RawStream) -> None:
    while True:
        await stream.ack()


async def test_shutdown_drains_streams_with_a_retryable_status(database_url: str) -> None:
    api = await RunningServer.start(database_url)
    buyer = await committed_plan(api, "drained", PLAN, {MEDIA_BUY: 150_000})
    stream = RawStream(api, buyer.key, "draining")
    await stream.opened()
    stream.send(1, [report(PLAN, MEDIA_BUY, 15, 1_000)])
    assert (await stream.ack()).seq == 1
    stopping = asyncio.create_task(api.server.stop(5))
    with pytest.raises(aio.AioRpcError) as raised:
        await _acks_until_the_stream_ends(stream)
    await stopping
    await api.channel.close()
    error = decode(raised.value)
    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "DRAINING")
    assert "google.rpc.RetryInfo" in error.details
